//! OpenAI's Files API as far as the Batch API needs it: `POST /v1/files` (multipart `file` and
//! `purpose`; only purpose `batch`, a JSONL file of requests), `GET /v1/files`,
//! `GET /v1/files/{file_id}`, `GET /v1/files/{file_id}/content` and
//! `DELETE /v1/files/{file_id}`.
//!
//! An uploaded file is `file-<uuid>`. A batch's output and error files are not stored: they
//! are `file-<batch uuid>-output` / `-errors`, purpose `batch_output`, read back from the
//! batch's requests as their content is served (`batch_output`). A user only ever sees their
//! own files: another user's id answers 404, as an id nobody has does.

use axum::Json;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::batch_output;
use super::error::OpenAiError;
use super::list::{self, OpenAiList};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::extract::{QueryParams, has_nul_escape};
use crate::state::AppState;
use llm_shared::openai_batches::{self, BatchFile};
use llm_shared::openai_files::{self, FileMeta, MAX_FILE_BYTES, MAX_FILENAME_CHARS};

/// Most files one listing returns.
const MAX_LIST: i64 = 1000;

/// What a file id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileRef {
    Uploaded(Uuid),
    /// The output or error file of a batch.
    OfBatch(Uuid, BatchFile),
}

impl FileRef {
    pub(super) fn parse(id: &str) -> Option<Self> {
        let rest = id.strip_prefix("file-")?;
        let (hex, file) = match rest.split_once('-') {
            None => (rest, None),
            Some((hex, "output")) => (hex, Some(BatchFile::Output)),
            Some((hex, "errors")) => (hex, Some(BatchFile::Errors)),
            Some(_) => return None,
        };
        if hex.len() != 32 {
            return None;
        }
        let uuid = Uuid::try_parse(hex).ok()?;
        Some(match file {
            None => Self::Uploaded(uuid),
            Some(file) => Self::OfBatch(uuid, file),
        })
    }

    pub(super) fn id(self) -> String {
        match self {
            Self::Uploaded(id) => format!("file-{}", id.simple()),
            Self::OfBatch(id, BatchFile::Output) => format!("file-{}-output", id.simple()),
            Self::OfBatch(id, BatchFile::Errors) => format!("file-{}-errors", id.simple()),
        }
    }
}

/// An OpenAI file object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    /// `file-...`
    pub id: String,
    /// `file`
    pub object: String,
    pub bytes: i64,
    pub created_at: i64,
    pub filename: String,
    /// `batch` (uploaded) or `batch_output` (a batch's output or error file).
    pub purpose: String,
    /// Always `processed`: a file is checked as it is uploaded.
    pub status: String,
    pub expires_at: Option<i64>,
    pub status_details: Option<String>,
}

impl FileObject {
    fn uploaded(meta: &FileMeta) -> Self {
        Self {
            id: FileRef::Uploaded(meta.id).id(),
            object: "file".into(),
            bytes: i64::from(meta.bytes),
            created_at: meta.created_at.timestamp(),
            filename: meta.filename.clone(),
            purpose: meta.purpose.clone(),
            status: "processed".into(),
            expires_at: None,
            status_details: None,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// `file`
    pub object: String,
    pub deleted: bool,
}

/// The query of `GET /v1/files`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileListQuery {
    /// A file id: the page starts after it.
    after: Option<String>,
    /// 1 to 1000 (default 1000).
    limit: Option<i64>,
    /// `desc` (default, newest first) or `asc`.
    order: Option<String>,
    /// Only files of this purpose.
    purpose: Option<String>,
}

pub(super) fn no_such_file(id: &str) -> OpenAiError {
    OpenAiError::Custom {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: None,
        message: format!(
            "No such File object: {}",
            id.chars().take(80).collect::<String>()
        ),
        param: Some("file_id".into()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "openai",
    summary = "Upload a JSONL file of requests for the Batch API (purpose `batch`, up to 8 MiB and 1,000 lines)",
    request_body(content_type = "multipart/form-data", description = "`file` (the JSONL file) and `purpose` (`batch`)"),
    responses(
        (status = 200, description = "the stored file", body = FileObject),
        super::batches::BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn upload_file(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, OpenAiError> {
    let user = user?;
    let mut multipart = multipart.map_err(|e| OpenAiError::invalid(e.body_text(), Some("file")))?;
    let (mut file, mut purpose) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        match field.name() {
            Some("file") => {
                let filename = field
                    .file_name()
                    .unwrap_or("upload.jsonl")
                    .chars()
                    .take(MAX_FILENAME_CHARS)
                    .collect::<String>();
                let bytes = field.bytes().await.map_err(multipart_error)?;
                file = Some((filename, bytes));
            }
            Some("purpose") => {
                let text = field.text().await.map_err(multipart_error)?;
                purpose = Some(text.chars().take(64).collect::<String>());
            }
            // Other fields (e.g. `expires_after[...]`) are read and set aside.
            _ => {
                field.bytes().await.map_err(multipart_error)?;
            }
        }
    }
    let Some(purpose) = purpose else {
        return Err(OpenAiError::invalid("purpose is required", Some("purpose")));
    };
    if purpose != "batch" {
        return Err(OpenAiError::invalid(
            format!(
                "purpose `{purpose}` is not supported: this service accepts files for the Batch API only (purpose `batch`)"
            ),
            Some("purpose"),
        ));
    }
    let Some((filename, bytes)) = file else {
        return Err(OpenAiError::invalid("file is required", Some("file")));
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    if bytes.contains(&0) || has_nul_escape(&bytes) {
        return Err(OpenAiError::invalid(
            "the file contains a NUL character, which cannot be stored",
            Some("file"),
        ));
    }
    let text = openai_files::check_jsonl(&bytes, state.limits.max_body_bytes)
        .map_err(|e| OpenAiError::from(ApiError::from(e)))?;
    let meta = openai_files::insert(&state.pool, user.id, &purpose, &filename, text)
        .await
        .map_err(|e| OpenAiError::from(ApiError::from(llm_shared::error::DomainError::from(e))))?;
    tracing::info!(user.id = %user.id, bytes = meta.bytes, "file uploaded");
    Ok(Json(FileObject::uploaded(&meta)))
}

fn too_large() -> OpenAiError {
    OpenAiError::Custom {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        code: Some("file_too_large".into()),
        message: format!("a file may hold at most {MAX_FILE_BYTES} bytes"),
        param: Some("file".into()),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> OpenAiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    OpenAiError::invalid(e.body_text(), Some("file"))
}

#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "openai",
    summary = "The caller's uploaded files, newest first",
    params(FileListQuery),
    responses(
        (status = 200, description = "a page of files", body = OpenAiList<FileObject>),
        super::batches::BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list_files(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    query: Result<QueryParams<FileListQuery>, ApiError>,
) -> Result<Json<OpenAiList<FileObject>>, OpenAiError> {
    let (user, QueryParams(query)) = (user?, query?);
    let limit = list::limit(query.limit, MAX_LIST, MAX_LIST)?;
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "order must be asc or desc",
                Some("order"),
            ));
        }
    };
    let after = match query.after.as_deref() {
        None => None,
        Some(id) => match FileRef::parse(id) {
            Some(FileRef::Uploaded(uuid)) => Some(uuid),
            _ => {
                return Err(OpenAiError::invalid(
                    "after must be a file id",
                    Some("after"),
                ));
            }
        },
    };
    let files = openai_files::list(
        &state.pool,
        user.id,
        query.purpose.as_deref(),
        after,
        ascending,
        limit + 1,
    )
    .await
    .map_err(db_error)?;
    Ok(Json(OpenAiList::page(
        files,
        limit,
        FileObject::uploaded,
        |f| f.id.as_str(),
    )))
}

pub(super) fn db_error(e: sqlx::Error) -> OpenAiError {
    OpenAiError::from(ApiError::from(llm_shared::error::DomainError::from(e)))
}

#[utoipa::path(
    get,
    path = "/v1/files/{file_id}",
    tag = "openai",
    summary = "A file: uploaded, or a batch's output or error file",
    params(("file_id" = String, Path, description = "`file-...`")),
    responses(
        (status = 200, description = "the file", body = FileObject),
        super::batches::BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn retrieve_file(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(file_id): Path<String>,
) -> Result<Json<FileObject>, OpenAiError> {
    let user = user?;
    match FileRef::parse(&file_id) {
        Some(FileRef::Uploaded(id)) => openai_files::find(&state.pool, id, user.id)
            .await
            .map_err(db_error)?
            .map(|meta| Json(FileObject::uploaded(&meta)))
            .ok_or_else(|| no_such_file(&file_id)),
        Some(FileRef::OfBatch(batch_id, file)) => {
            let batch = batch_output::finished_batch(&state, batch_id, file, user.id)
                .await?
                .ok_or_else(|| no_such_file(&file_id))?;
            let bytes = batch_output::size(&state, batch_id, file).await?;
            Ok(Json(FileObject {
                id: FileRef::OfBatch(batch_id, file).id(),
                object: "file".into(),
                bytes,
                created_at: batch.finished_at.unwrap_or(batch.created_at).timestamp(),
                filename: match file {
                    BatchFile::Output => "batch_output.jsonl".into(),
                    BatchFile::Errors => "batch_errors.jsonl".into(),
                },
                purpose: "batch_output".into(),
                status: "processed".into(),
                expires_at: None,
                status_details: None,
            }))
        }
        None => Err(no_such_file(&file_id)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/files/{file_id}/content",
    tag = "openai",
    summary = "A file's content (JSONL); a batch's output and error files are read from its requests as they are sent",
    params(("file_id" = String, Path, description = "`file-...`")),
    responses(
        (status = 200, description = "the JSONL text", content_type = "application/jsonl", body = String),
        super::batches::BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn file_content(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(file_id): Path<String>,
) -> Result<Response, OpenAiError> {
    let user = user?;
    let jsonl = [(header::CONTENT_TYPE, "application/jsonl")];
    match FileRef::parse(&file_id) {
        Some(FileRef::Uploaded(id)) => {
            let content = openai_files::content(&state.pool, id, user.id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| no_such_file(&file_id))?;
            Ok((jsonl, content).into_response())
        }
        Some(FileRef::OfBatch(batch_id, file)) => {
            batch_output::finished_batch(&state, batch_id, file, user.id)
                .await?
                .ok_or_else(|| no_such_file(&file_id))?;
            Ok((jsonl, batch_output::body(&state, batch_id, file)).into_response())
        }
        None => Err(no_such_file(&file_id)),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/files/{file_id}",
    tag = "openai",
    summary = "Delete an uploaded file (a batch made from it is unaffected)",
    params(("file_id" = String, Path, description = "`file-...`")),
    responses(
        (status = 200, description = "deleted", body = FileDeleted),
        super::batches::BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn delete_file(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(file_id): Path<String>,
) -> Result<Json<FileDeleted>, OpenAiError> {
    let user = user?;
    match FileRef::parse(&file_id) {
        Some(FileRef::Uploaded(id)) => {
            if !openai_files::delete(&state.pool, id, user.id)
                .await
                .map_err(db_error)?
            {
                return Err(no_such_file(&file_id));
            }
            Ok(Json(FileDeleted {
                id: FileRef::Uploaded(id).id(),
                object: "file".into(),
                deleted: true,
            }))
        }
        Some(FileRef::OfBatch(batch_id, _)) => {
            // Read from the batch's requests, it lives as long as they do.
            match openai_batches::find(&state.pool, batch_id, user.id)
                .await
                .map_err(db_error)?
            {
                Some(_) => Err(OpenAiError::invalid(
                    "a batch's output and error files are read from its requests and cannot be deleted",
                    Some("file_id"),
                )),
                None => Err(no_such_file(&file_id)),
            }
        }
        None => Err(no_such_file(&file_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_read_back_as_what_they_name() {
        let id = Uuid::now_v7();
        for file in [
            FileRef::Uploaded(id),
            FileRef::OfBatch(id, BatchFile::Output),
            FileRef::OfBatch(id, BatchFile::Errors),
        ] {
            assert_eq!(FileRef::parse(&file.id()), Some(file));
        }
        for bad in [
            "file-",
            "file-xyz",
            &format!("file-{id}"),
            &format!("file-{}-other", id.simple()),
            &format!("batch_{}", id.simple()),
        ] {
            assert_eq!(FileRef::parse(bad), None, "{bad}");
        }
    }
}
