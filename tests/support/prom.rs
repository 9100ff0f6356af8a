//! Reading the Prometheus text format in tests: one sample by name and labels.

use std::collections::BTreeMap;

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}')?;
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`; `None` if there is
/// none. Panics if several match (the test's label set is ambiguous).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = parse(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several samples: {matching:?}"
    );
    matching.first().map(|s| s.value)
}

/// Whether the exposition declares the metric family (`# TYPE name ...`).
pub fn declares(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("# TYPE {name} ")))
}
