//! Files uploaded through OpenAI's Files API (`/v1/files`) with purpose `batch`: a JSONL file
//! of requests, kept whole (bounded by [`MAX_FILE_BYTES`]) until its owner deletes it, and read
//! once when a batch is made from it (`openai_batches`). Each file belongs to one user; every
//! read names the owner, so another user's file is never found.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::batches::MAX_BATCH_ITEMS;
use crate::error::DomainError;

/// Largest file accepted: the size of a native batch body (32 × the default 256 KiB request
/// body), since a file becomes one batch and is read whole, once, when the batch is made.
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Most lines a file may hold: one line is one request of one batch.
pub const MAX_FILE_LINES: usize = MAX_BATCH_ITEMS;
/// Longest file name kept.
pub const MAX_FILENAME_CHARS: usize = 255;

/// A stored file, without its content.
#[derive(Debug, Clone, FromRow)]
pub struct FileMeta {
    pub id: Uuid,
    pub purpose: String,
    pub filename: String,
    pub bytes: i32,
    pub created_at: DateTime<Utc>,
}

/// Checks an upload of purpose `batch`: UTF-8, 1 to [`MAX_FILE_LINES`] non-blank lines, each
/// at most `max_line_bytes` long and one JSON object. Returns the text. Lines are counted and
/// measured before any is parsed, so a file of a million tiny lines costs one pass over its
/// bytes; serde_json's recursion limit refuses a line nested too deep.
pub fn check_jsonl(bytes: &[u8], max_line_bytes: usize) -> Result<&str, DomainError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DomainError::validation("file", "the file is not UTF-8 text"))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .take(MAX_FILE_LINES + 1)
        .collect();
    if lines.is_empty() {
        return Err(DomainError::validation("file", "the file has no lines"));
    }
    if lines.len() > MAX_FILE_LINES {
        return Err(DomainError::validation(
            "file",
            format!("a batch file holds at most {MAX_FILE_LINES} lines"),
        ));
    }
    for (index, line) in &lines {
        if line.len() > max_line_bytes {
            return Err(DomainError::validation(
                "file",
                format!("line {} is longer than {max_line_bytes} bytes", index + 1),
            ));
        }
    }
    for (index, line) in lines {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).map_err(|e| {
            DomainError::validation(
                "file",
                format!("line {} is not a JSON object: {e}", index + 1),
            )
        })?;
    }
    Ok(text)
}

/// Stores a file for `user_id`.
pub async fn insert(
    pool: &PgPool,
    user_id: Uuid,
    purpose: &str,
    filename: &str,
    content: &str,
) -> Result<FileMeta, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO openai_files (id, user_id, purpose, filename, bytes, content)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, purpose, filename, bytes, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(purpose)
    .bind(filename)
    .bind(i32::try_from(content.len()).unwrap_or(i32::MAX))
    .bind(content)
    .fetch_one(pool)
    .await
}

/// The file if it exists and belongs to `user_id`.
pub async fn find(pool: &PgPool, id: Uuid, user_id: Uuid) -> Result<Option<FileMeta>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, purpose, filename, bytes, created_at FROM openai_files WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// The file's content if it exists and belongs to `user_id`.
pub async fn content(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT content FROM openai_files WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Deletes the file if it exists and belongs to `user_id`; whether it did.
pub async fn delete(pool: &PgPool, id: Uuid, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM openai_files WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

/// A page of the user's files: at most `limit`, after the file `after` in the order asked for
/// (newest first unless `ascending`), of one purpose if given.
pub async fn list(
    pool: &PgPool,
    user_id: Uuid,
    purpose: Option<&str>,
    after: Option<Uuid>,
    ascending: bool,
    limit: i64,
) -> Result<Vec<FileMeta>, sqlx::Error> {
    sqlx::query_as(include_str!("openai_files/sql/list.sql"))
        .bind(user_id)
        .bind(purpose)
        .bind(after)
        .bind(ascending)
        .bind(limit)
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_file_is_refused_naming_its_first_bad_line() {
        let err = check_jsonl(b"{\"a\":1}\n\n[1]\n", 1000).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(check_jsonl(deep.as_bytes(), 100_000).is_err());
        let many = "{}\n".repeat(MAX_FILE_LINES + 1);
        assert!(check_jsonl(many.as_bytes(), 1000).is_err());
        assert!(check_jsonl(b"{\"a\":1}\r\n{}\n", 1000).is_ok());
    }
}
