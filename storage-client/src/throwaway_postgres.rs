//! A throwaway PostgreSQL server for tests (feature `test-postgres`): `initdb` into a
//! temporary directory, started with `pg_ctl` on a free loopback port, stopped
//! (immediately) when dropped.
//!
//! The server binaries are looked up in `GITGATE_PG_BIN`, `/usr/local/bin` and
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so as root the server
//! runs as the `postgres` (or else `nobody`) user through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway server.
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

fn find_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("GITGATE_PG_BIN") {
        candidates.push(dir.into());
    }
    candidates.push("/usr/local/bin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        candidates.extend(versions);
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .expect("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set GITGATE_PG_BIN")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl ThrowawayPostgres {
    /// Create and start a server; panics with the server's log when that fails.
    pub fn start() -> Self {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("gitgate-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let run_as = is_root().then(|| {
            if user_exists("postgres") {
                "postgres".to_owned()
            } else {
                "nobody".to_owned()
            }
        });
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the PostgreSQL directory failed");
        }
        let port = free_port();
        let server = Self {
            dir,
            bin,
            port,
            run_as,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "gitgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        let log = log.to_string_lossy().into_owned();
        server.run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .current_dir("/tmp")
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{program} failed: {}\n{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A URL for database `db` (created by [`Self::create_database`], or `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://gitgate@127.0.0.1:{}/{db}", self.port)
    }

    /// Create database `db`.
    pub async fn create_database(&self, db: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to throwaway postgres");
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
    }

    /// The directory holding the server's data and log.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .current_dir("/tmp")
            .output();
    }
}
