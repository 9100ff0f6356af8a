//! Registry reloads followed by every process. An api that reloads its registry (an admin's
//! reload, a `model.updated` event from the hub) moves the registry's version on in
//! PostgreSQL (`model_registry_version`) and announces it on [`CHANNEL`] in the same
//! transaction ([`announce`]); every api and worker listens ([`follower`]) and re-reads its
//! registry file. PostgreSQL keeps the version, so a process that was between connections when
//! a notice came reads it when it listens again and reloads if it moved: a missed notice never
//! leaves a registry behind.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::listener::Heard;
use crate::models::LiveRegistry;

/// The channel a reload is announced on, with the registry's new version as its payload.
pub const CHANNEL: &str = "models_reload";

/// Moves the registry's version on and announces it, in the caller's transaction: the
/// listeners hear of it once that commits. Returns the new version.
pub async fn announce(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE model_registry_version SET version = version + 1, updated_at = NOW()
         RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(version.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(version)
}

/// The registry's version as PostgreSQL has it.
pub async fn current_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM model_registry_version")
        .fetch_one(pool)
        .await
}

/// The version to reload to for a notice with `payload`, having applied `seen`; `None`: no
/// reload. An empty or unreadable payload (a release that announced without a version) always
/// reloads, keeping `seen`.
fn newer(payload: &str, seen: i64) -> Option<i64> {
    match payload.parse::<i64>() {
        Ok(version) if version <= seen => None,
        Ok(version) => Some(version),
        Err(_) => Some(seen),
    }
}

/// The handler of [`CHANNEL`] for the process's listener ([`crate::listener`]): re-reads
/// `models` whenever a reload is announced, for as long as the process runs. Each time the
/// listener listens (again) the version is read, and `models` reloaded if it is not the one last
/// applied. `loaded` is the version read before `models` was first loaded ([`current_version`]):
/// a reload announced after it is applied, even one announced before the listener listens.
/// Must be called inside a tokio runtime: the reloads run on a task of their own.
pub fn follower(
    models: LiveRegistry,
    pool: PgPool,
    loaded: i64,
) -> impl Fn(&Heard) + Send + Sync + 'static {
    let (heard, hearing) = mpsc::unbounded_channel();
    tokio::spawn(follow(models, pool, loaded, hearing));
    move |what: &Heard| {
        let _ = heard.send(what.clone());
    }
}

async fn follow(
    models: LiveRegistry,
    pool: PgPool,
    loaded: i64,
    mut hearing: mpsc::UnboundedReceiver<Heard>,
) {
    let mut seen = loaded;
    while let Some(heard) = hearing.recv().await {
        match heard {
            Heard::Notice(payload) => {
                if let Some(version) = newer(&payload, seen) {
                    reload(&models, version, &mut seen);
                }
            }
            Heard::Listening => catch_up(&models, &pool, &mut seen).await,
        }
    }
}

/// Reads the version and reloads if it moved; a failed read is tried again every second.
async fn catch_up(models: &LiveRegistry, pool: &PgPool, seen: &mut i64) {
    loop {
        match current_version(pool).await {
            Ok(version) => {
                if *seen != version {
                    reload(models, version, seen);
                }
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not read the registry's version; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn reload(models: &LiveRegistry, version: i64, seen: &mut i64) {
    match models.reload() {
        Ok(fresh) => {
            *seen = version;
            tracing::info!(
                models = fresh.all().len(),
                version,
                "model registry reloaded"
            );
        }
        Err(err) => {
            // `seen` stays: the next notice or reconnection tries again.
            tracing::warn!(error = %err, version, "model registry not reloaded; keeping the one in use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::newer;

    #[test]
    fn a_notice_reloads_only_a_version_not_applied_yet() {
        assert_eq!(newer("3", 2), Some(3));
        assert_eq!(newer("2", 2), None);
        assert_eq!(newer("1", 2), None);
        // an announcement without a version (an older release's) always reloads
        assert_eq!(newer("", 2), Some(2));
        assert_eq!(newer("not a number", 2), Some(2));
    }
}
