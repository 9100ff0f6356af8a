//! Prompt templates (minijinja) from `prompts/`: `character/`, `campaign/`, and `common/`
//! (shared preamble and macros, included by the others).
//!
//! A template file declares itself in a leading comment holding TOML (`{#- … -#}`): a
//! `[template]` table (description, default model, output `text` or `json`, version), its
//! `[params.*]` (type, required, default, description), an `[output_schema]` for JSON output
//! and an `[example]`. Files without a `[template]` table (the `common/` ones) are partials:
//! includable, not renderable. A template's id is its path without `.j2`, with dots:
//! `character/backstory.j2` → `character.backstory`.
//!
//! Rendering is sandboxed (no file, environment or network access: only the templates loaded
//! here) and strict: a variable the template uses but nobody declared or gave is an error that
//! names it. A broken template stops start-up with its file and line.
//!
//! Besides its parameters a template sees `context`, the request's context object (`{}` when
//! it has none; test a key with `{% if context.x is defined %}`). No parameter may be called
//! `context`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl ParamType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Number => value.is_number(),
            Self::Boolean => value.is_boolean(),
            Self::Array => value.is_array(),
            Self::Object => value.is_object(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    description: String,
    default_model: Option<String>,
    output: OutputFormat,
    version: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    template: Header,
    #[serde(default)]
    params: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    output_schema: Option<Value>,
    #[serde(default)]
    example: Option<Map<String, Value>>,
}

/// A renderable template, as listed by the api.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    pub id: String,
    pub description: String,
    pub version: u32,
    pub default_model: Option<String>,
    pub output: OutputFormat,
    pub params: BTreeMap<String, ParamSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Map<String, Value>>,
    /// File it was loaded from, relative to the prompts directory.
    pub file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: invalid front matter: {message}")]
    FrontMatter { file: String, message: String },
    #[error("{0}")]
    Syntax(String),
}

/// Why a render was refused (a client error).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown template `{0}`")]
    UnknownTemplate(String),
    #[error("{0}")]
    Params(String),
    #[error("{0}")]
    Render(String),
}

/// A rendered prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    pub template_id: String,
    pub version: u32,
    pub prompt: String,
    pub output: OutputFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    pub default_model: Option<String>,
}

pub struct PromptLibrary {
    env: Environment<'static>,
    templates: BTreeMap<String, TemplateInfo>,
}

impl std::fmt::Debug for PromptLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptLibrary")
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PromptLibrary {
    /// Loads every `.j2` file under `dir`. A missing directory is an empty library; a broken
    /// template is an error naming its file (and line).
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        let mut templates = BTreeMap::new();
        let mut files = Vec::new();
        if dir.is_dir() {
            collect(dir, dir, &mut files)?;
        }
        files.sort();
        for relative in files {
            let path = dir.join(&relative);
            let source = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let name = relative.to_string_lossy().replace('\\', "/");
            if let Some(front) = front_matter(&name, &source)? {
                let id = name.trim_end_matches(".j2").replace('/', ".");
                if front.params.contains_key(CONTEXT_VARIABLE) {
                    return Err(TemplateError::FrontMatter {
                        file: name.clone(),
                        message: format!(
                            "`{CONTEXT_VARIABLE}` is the request's context, not a parameter"
                        ),
                    });
                }
                if let Some(schema) = &front.output_schema {
                    crate::json_schema::check_schema(schema).map_err(|message| {
                        TemplateError::FrontMatter {
                            file: name.clone(),
                            message: format!("output_schema: {message}"),
                        }
                    })?;
                }
                templates.insert(
                    id.clone(),
                    TemplateInfo {
                        id,
                        description: front.template.description,
                        version: front.template.version,
                        default_model: front.template.default_model,
                        output: front.template.output,
                        params: front.params,
                        output_schema: front.output_schema,
                        example: front.example,
                        file: name.clone(),
                    },
                );
            }
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::Syntax(describe(&e, &name)))?;
        }
        Ok(Self { env, templates })
    }

    pub fn list(&self) -> impl Iterator<Item = &TemplateInfo> {
        self.templates.values()
    }

    pub fn get(&self, id: &str) -> Option<&TemplateInfo> {
        self.templates.get(id)
    }

    /// Checks the parameters against the template's declarations and renders it, with the
    /// request's `context` (an object, `{}` for none) as the variable `context`.
    pub fn render(
        &self,
        id: &str,
        params: &Map<String, Value>,
        request_context: &Value,
    ) -> Result<Rendered, RenderError> {
        let info = self
            .get(id)
            .ok_or_else(|| RenderError::UnknownTemplate(id.to_owned()))?;
        let mut context = bind_params(info, params)?;
        context.insert(CONTEXT_VARIABLE.to_owned(), request_context.clone());
        let template = self
            .env
            .get_template(&info.file)
            .map_err(|e| RenderError::Render(describe(&e, &info.file)))?;
        let prompt = template
            .render(&context)
            .map_err(|e| RenderError::Render(describe(&e, &info.file)))?;
        Ok(Rendered {
            template_id: info.id.clone(),
            version: info.version,
            prompt: prompt.trim().to_owned(),
            output: info.output,
            output_schema: info.output_schema.clone(),
            default_model: info.default_model.clone(),
        })
    }
}

/// The variable a template reads the request's context from.
const CONTEXT_VARIABLE: &str = "context";

/// Every declared parameter gets a value (given, its default, or null), so templates can test
/// optional ones; unknown, missing required and mistyped parameters are refused, all at once.
fn bind_params(
    info: &TemplateInfo,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, RenderError> {
    let mut problems = Vec::new();
    for name in given.keys() {
        if !info.params.contains_key(name) {
            problems.push(format!("unknown parameter `{name}`"));
        }
    }
    let mut context = Map::new();
    for (name, spec) in &info.params {
        match given.get(name).filter(|v| !v.is_null()) {
            Some(value) if !spec.kind.accepts(value) => {
                problems.push(
                    format!("parameter `{name}` must be of type {:?}", spec.kind).to_lowercase(),
                );
            }
            Some(value) => {
                context.insert(name.clone(), value.clone());
            }
            None if spec.required => problems.push(format!("missing required parameter `{name}`")),
            None => {
                context.insert(name.clone(), spec.default.clone().unwrap_or(Value::Null));
            }
        }
    }
    if problems.is_empty() {
        Ok(context)
    } else {
        Err(RenderError::Params(problems.join("; ")))
    }
}

/// A minijinja error with its template name and line.
fn describe(err: &minijinja::Error, file: &str) -> String {
    let name = err.name().unwrap_or(file);
    match err.line() {
        Some(line) => format!(
            "{name}, line {line}: {}",
            err.detail().unwrap_or(&err.to_string())
        ),
        None => format!("{name}: {err}"),
    }
}

fn front_matter(file: &str, source: &str) -> Result<Option<FrontMatter>, TemplateError> {
    let trimmed = source.trim_start();
    let Some(rest) = trimmed.strip_prefix("{#") else {
        return Ok(None);
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let Some(end) = rest.find("#}") else {
        return Err(TemplateError::FrontMatter {
            file: file.to_owned(),
            message: "unclosed comment".into(),
        });
    };
    let body = rest[..end].trim_end_matches('-');
    if !body.contains("[template]") {
        return Ok(None);
    }
    toml::from_str(body)
        .map(Some)
        .map_err(|e| TemplateError::FrontMatter {
            file: file.to_owned(),
            message: e.to_string(),
        })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TemplateError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TemplateError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "j2")
            && let Ok(relative) = path.strip_prefix(root)
        {
            out.push(relative.to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(files: &[(&str, &str)]) -> Result<PromptLibrary, TemplateError> {
        let dir = std::env::temp_dir().join(format!("prompts-{}", uuid::Uuid::now_v7()));
        for (name, body) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let lib = PromptLibrary::load(&dir);
        let _ = std::fs::remove_dir_all(dir);
        lib
    }

    const HEADER: &str = "{#-\n[template]\ndescription = \"t\"\noutput = \"text\"\nversion = 2\n";

    #[test]
    fn parameters_are_checked_and_undefined_variables_named() {
        let t = format!(
            "{HEADER}[params.name]\ntype = \"string\"\nrequired = true\n[params.level]\ntype = \"integer\"\ndefault = 1\n[params.title]\ntype = \"string\"\n-#}}\nHi {{{{ name }}}} L{{{{ level }}}}{{% if title %}} {{{{ title }}}}{{% endif %}}"
        );
        let lib = library(&[("a/hello.j2", &t)]).unwrap();
        let ok = lib
            .render(
                "a.hello",
                serde_json::json!({"name": "Vex"}).as_object().unwrap(),
                &serde_json::json!({}),
            )
            .unwrap();
        assert_eq!(ok.prompt, "Hi Vex L1");
        assert_eq!(ok.version, 2);
        let err = lib
            .render(
                "a.hello",
                serde_json::json!({"level": "x", "colour": 1})
                    .as_object()
                    .unwrap(),
                &serde_json::json!({}),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown parameter `colour`")
                && msg.contains("missing required parameter `name`")
                && msg.contains("`level` must be of type integer"),
            "{msg}"
        );

        let typo = format!("{HEADER}-#}}\nHello {{{{ nmae }}}}");
        let lib = library(&[("b.j2", &typo)]).unwrap();
        let err = lib
            .render("b", &Map::new(), &serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.j2") && err.contains("line"), "{err}");
    }

    #[test]
    fn a_broken_template_names_its_file_and_line() {
        let broken = format!("{HEADER}-#}}\nline one\n{{% if x %}}unclosed");
        let err = library(&[("c/broken.j2", &broken)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("c/broken.j2") && err.contains("line"), "{err}");
        let bad_front = "{#-\n[template]\ndescription = 1\n-#}\nx";
        let err = library(&[("d.j2", bad_front)]).unwrap_err().to_string();
        assert!(
            err.contains("d.j2") && err.contains("front matter"),
            "{err}"
        );
    }

    #[test]
    fn templates_cannot_reach_files() {
        let sneaky = format!("{HEADER}-#}}\n{{% include \"/etc/passwd\" %}}");
        let lib = library(&[("e.j2", &sneaky)]).unwrap();
        assert!(
            lib.render("e", &Map::new(), &serde_json::json!({}))
                .is_err()
        );
    }

    #[test]
    fn a_template_reads_the_requests_context_and_no_parameter_takes_its_name() {
        let t = format!(
            "{HEADER}-#}}\nA {{{{ context.class }}}} of level {{{{ context.party.level }}}}{{% if context.setting is defined %}} in {{{{ context.setting }}}}{{% endif %}}."
        );
        let lib = library(&[("f.j2", &t)]).unwrap();
        let context = serde_json::json!({"class": "bard", "party": {"level": 3}});
        let rendered = lib.render("f", &Map::new(), &context).unwrap();
        assert_eq!(rendered.prompt, "A bard of level 3.");
        // Strict as for parameters: a key the context lacks is named, not rendered empty.
        let err = lib
            .render("f", &Map::new(), &serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.j2") && err.contains("undefined"), "{err}");

        let shadowing = format!("{HEADER}[params.context]\ntype = \"object\"\n-#}}\nx");
        let err = library(&[("g.j2", &shadowing)]).unwrap_err().to_string();
        assert!(err.contains("g.j2") && err.contains("`context`"), "{err}");
    }
}
