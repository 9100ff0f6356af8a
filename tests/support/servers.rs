//! Private PostgreSQL and Redis servers, for tests that stop and restart their database or
//! Redis: the machine's shared servers (5432, 6379) serve every other test at the same time and
//! are never restarted.
//!
//! [`PrivatePostgres`] is a throw-away cluster (`initdb` + `pg_ctl` from the installed
//! PostgreSQL, trust auth, fsync off) in a temporary directory on a free loopback port, run as
//! the `postgres` OS user when the harness runs as root. [`PrivateRedis`] is a
//! `redis-server` child process without persistence on a free loopback port.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::free_port;

/// A `redis-server` of its own, which can be killed and started again on the same port.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.up().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it answers.
    pub async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis-server on port {} did not start", self.port);
    }

    /// SIGKILL: every connection drops at once, and the data is gone (no persistence).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A PostgreSQL cluster of its own, which can be stopped and started again on the same port.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The server's settings (`-c` options).
    settings: &'static str,
}

/// A cluster for outages: nothing it writes is flushed (a stop loses nothing, a crash may).
const QUICK: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off";
/// A cluster that keeps what a production one keeps through a crash: every flush asked for is
/// made. Its WAL writer flushes what the commits that did not wait left behind only every 10 s
/// (production: 200 ms), so a crash right after such a commit loses it unless the service
/// flushed it itself.
const DURABLE: &str = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on \
                       -c wal_writer_delay=10s";

impl PrivatePostgres {
    /// Creates and starts the cluster (a second or two), flushing nothing.
    pub async fn start() -> Self {
        Self::start_with(QUICK).await
    }

    /// [`PrivatePostgres::start`] for a cluster that flushes as a production one does, its WAL
    /// writer aside ([`DURABLE`]): for [`PrivatePostgres::crash`].
    pub async fn start_durable() -> Self {
        Self::start_with(DURABLE).await
    }

    async fn start_with(settings: &'static str) -> Self {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("llm-chaos-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            port: free_port(),
            dir,
            bin,
            settings,
        };
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", pg.dir.display());
        }
        let data = pg.data_dir();
        let out = pg
            .as_postgres(&pg.bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.up().await;
        pg
    }

    /// Admin connection URL (the `postgres` database), for [`crate::TestDb::on`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {} -c max_connections=300 \
             -c shared_buffers=32MB",
            self.port,
            self.dir.display(),
            self.settings
        );
        self.pg_ctl(
            &["start", "-w", "-t", "60", "-o", &options, "-l"],
            Some("log"),
        )
        .await;
    }

    /// Fast shutdown: every session is terminated, in-flight transactions roll back.
    pub async fn down(&self) {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", "fast"], None)
            .await;
    }

    /// A crash: every process quits at once, writing nothing; what only its memory held (WAL
    /// not yet written) is lost, and the next [`PrivatePostgres::up`] recovers from the WAL.
    pub async fn crash(&self) {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", "immediate"], None)
            .await;
    }

    async fn pg_ctl(&self, args: &[&str], log_file: Option<&str>) {
        let mut cmd = self.as_postgres(&self.bin.join("pg_ctl"));
        cmd.args(args);
        if let Some(log) = log_file {
            cmd.arg(self.dir.join(log));
        }
        let out = cmd.arg("-D").arg(self.data_dir()).output().await.unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The command, run as the `postgres` OS user when we are root (PostgreSQL refuses root).
    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if running_as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            std::process::Command::new(pg_ctl)
        };
        let _ = cmd
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(
        "no PostgreSQL server binaries: set PG_BIN_DIR (Debian: apt-get install postgresql)",
    )
}
