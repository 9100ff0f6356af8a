//! OpenAI's list object (`GET /v1/files`, `GET /v1/batches`): a page of the caller's items
//! after a cursor, with `first_id`, `last_id` and `has_more`, and the `limit` it may ask for.

use serde::Serialize;

use super::error::OpenAiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiList<T> {
    /// `list`
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> OpenAiList<T> {
    /// The page of `rows`, read with one more than `limit` so that `has_more` is known, each
    /// rendered by `render`; `id` names an item.
    pub(super) fn page<R>(
        mut rows: Vec<R>,
        limit: i64,
        render: impl Fn(&R) -> T,
        id: impl Fn(&T) -> &str,
    ) -> Self {
        let has_more = rows.len() as i64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        let data: Vec<T> = rows.iter().map(render).collect();
        Self {
            object: "list",
            first_id: data.first().map(|item| id(item).to_owned()),
            last_id: data.last().map(|item| id(item).to_owned()),
            data,
            has_more,
        }
    }
}

/// The `limit` asked for (else `default`), refused outside 1 to `max`.
pub(super) fn limit(asked: Option<i64>, default: i64, max: i64) -> Result<i64, OpenAiError> {
    let limit = asked.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(OpenAiError::invalid(
            format!("limit must be between 1 and {max}"),
            Some("limit"),
        ));
    }
    Ok(limit)
}
