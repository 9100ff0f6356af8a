//! Answering each caller of a group-committed statement, whether the statement ran or failed.

use crate::error;

/// What each caller of a group-committed statement gets: its own answer from `batch`, or, when
/// the batch's statement failed, an error of its own (`sqlx::Error` is not `Clone`). A failed
/// statement rolled back as a whole (one statement is atomic): nothing of the batch took
/// effect, so every caller may be answered as if it had run alone, and must get an error or
/// its own answer (an error lets apalis deliver its job again).
///
/// - A connection-level failure ([`error::is_unavailable`]: pool timeout, broken connection,
///   server shutting down) would meet every one of them alike: each gets a copy of it, with
///   the same classification and message ([`error::replicate`]), and the database that is not
///   answering is not asked again.
/// - Any other failure (a row the statement refuses, a deadlock with another worker's batch, a
///   bug) may concern one caller only: each item runs again alone, in turn, so a bad row fails
///   only its own job and the others get their true answers.
pub(super) async fn answer_each<'a, T, R, E, F, Fut>(
    items: &'a [T],
    batch: Result<Vec<Result<R, E>>, sqlx::Error>,
    alone: F,
) -> Vec<Result<R, E>>
where
    E: From<sqlx::Error>,
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let err = match batch {
        Ok(answers) => return answers,
        Err(err) if items.len() == 1 => return vec![Err(err.into())],
        Err(err) => err,
    };
    if error::is_unavailable(&err) {
        return items
            .iter()
            .map(|_| Err(error::replicate(&err).into()))
            .collect();
    }
    tracing::warn!(error = %err, items = items.len(), "a batched statement failed; running its items one by one");
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        answers.push(alone(item).await);
    }
    answers
}

/// The one answer of a batch of one.
pub(super) fn only<T>(answers: Vec<T>) -> Result<T, sqlx::Error> {
    answers.into_iter().next().ok_or(sqlx::Error::RowNotFound)
}
