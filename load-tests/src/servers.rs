//! The servers under test, started fresh for every measured run: gitgate with the pack
//! cache, gitgate without it, and nginx + fcgiwrap + `git http-backend` (the baseline),
//! all over the same directory of bare repositories.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// gitgate, pack cache on.
    GitgateCache,
    /// gitgate, pack cache off.
    GitgateNoCache,
    /// nginx + fcgiwrap + git http-backend.
    Nginx,
}

impl Kind {
    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Self::GitgateCache => "gitgate+cache",
            Self::GitgateNoCache => "gitgate-nocache",
            Self::Nginx => "nginx+http-backend",
        }
    }
}

/// A running server.
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub authority: String,
    /// The long-lived processes (their children are found through /proc).
    pub pids: Vec<u32>,
    /// The process whose memory is reported (gitgate itself; nginx's master).
    pub main_pid: u32,
    children: Vec<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole tree: killing nginx's master or fcgiwrap's parent alone leaves
        // their workers and children running, orphaned.
        let roots: Vec<u32> = self.children.iter().map(Child::id).collect();
        let descendants: Vec<String> = crate::measure::process_tree(&roots)
            .into_iter()
            .filter(|pid| !roots.contains(pid))
            .map(|pid| pid.to_string())
            .collect();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !descendants.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&descendants)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Paths the servers need.
pub struct Setup {
    /// The gitgate binary.
    pub gitgate: PathBuf,
    /// Directory of bare repositories.
    pub repos: PathBuf,
    /// Scratch directory for configs, sockets, caches, logs.
    pub work: PathBuf,
    /// Directory nginx serves at `/static/`.
    pub static_dir: PathBuf,
}

/// Start a server of `kind`.
pub fn start(kind: Kind, setup: &Setup) -> anyhow::Result<Server> {
    match kind {
        Kind::GitgateCache => gitgate(kind.label(), setup, true, ""),
        Kind::GitgateNoCache => gitgate(kind.label(), setup, false, ""),
        Kind::Nginx => nginx(setup),
    }
}

/// A certificate and its key, PEM files.
pub struct Tls {
    /// The certificate (self-signed for 127.0.0.1; clients trust it as their CA).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// gitgate with its pack cache, serving HTTPS only with `tls`.
pub fn gitgate_tls(setup: &Setup, tls: &Tls) -> anyhow::Result<Server> {
    let listen = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls.cert.display(),
        tls.key.display()
    );
    gitgate("gitgate+cache-tls", setup, true, &listen)
}

fn gitgate(label: &str, setup: &Setup, cache: bool, listen: &str) -> anyhow::Result<Server> {
    let dir = setup.work.join(label);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("gitgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{listen}[storage]\n[[storage.nodes]]\nname = \"local\"\npath = \"{}\"\n\
             [cache]\nenabled = {cache}\ndir = \"{}\"\nmin_free_bytes = 0\n\
             [limits]\nfetch_concurrency_per_repo = 0\n[auth]\nanonymous = \"write\"\n[log]\nlevel = \"warn\"\n",
            setup.repos.display(),
            dir.join("cache").display()
        ),
    )?;
    let (child, authority) = spawn_listening(&setup.gitgate, &config, &dir.join("gitgate.log"))?;
    let pid = child.id();
    Ok(Server {
        authority,
        pids: vec![pid],
        main_pid: pid,
        children: vec![child],
    })
}

/// Start `program --config config` (gitgate or gitgate-node), logging to `log`, and
/// wait for the `listening on http://ADDR` (or `https://`) line it prints once it
/// accepts.
pub fn spawn_listening(
    program: &Path,
    config: &Path,
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(program)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line)?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let announced = line.trim();
    let Some(authority) = announced
        .strip_prefix("listening on http://")
        .or_else(|| announced.strip_prefix("listening on https://"))
        .map(str::to_owned)
    else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not start: {line:?}; see {}",
            program.display(),
            log.display()
        );
    };
    Ok((child, authority))
}

impl Server {
    /// A server made of already started processes, the first of which is reported on.
    pub fn of(authority: String, children: Vec<Child>) -> Self {
        let pids: Vec<u32> = children.iter().map(Child::id).collect();
        Self {
            authority,
            main_pid: pids.first().copied().unwrap_or(0),
            pids,
            children,
        }
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(authority: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(authority).is_err() {
        if Instant::now() > deadline {
            bail!("{authority} never accepted connections");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The `git-http-backend` of the git that gitgate's nodes run (`git` in PATH).
pub fn http_backend() -> anyhow::Result<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output()?;
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("git-http-backend");
    anyhow::ensure!(path.exists(), "{} not found", path.display());
    Ok(path)
}

fn nginx(setup: &Setup) -> anyhow::Result<Server> {
    let (dir, port, conf) = nginx_dir(setup, "nginx")?;
    let socket = dir.join("fcgiwrap.sock");
    let backend = http_backend()?;
    std::fs::write(
        &conf,
        nginx_config(
            &dir,
            &format!(
                r#"  server {{
    listen 127.0.0.1:{port};
    location /static/ {{ alias {static_dir}/; }}
    location ~ ^/.+\.git/(info/refs|git-upload-pack|git-receive-pack)$ {{
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:{socket};
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_CONFIG_COUNT 1;
      fastcgi_param GIT_CONFIG_KEY_0 http.receivepack;
      fastcgi_param GIT_CONFIG_VALUE_0 true;
      fastcgi_param PATH_INFO $uri;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_buffering off;
      fastcgi_request_buffering off;
      fastcgi_read_timeout 600s;
    }}
  }}
"#,
                static_dir = setup.static_dir.display(),
                socket = socket.display(),
                backend = backend.display(),
                repos = setup.repos.display(),
            ),
        ),
    )?;
    // fcgiwrap runs one request per child: give it as many children as clients so the
    // baseline is not serialized.
    let fcgi = Command::new("fcgiwrap")
        .args(["-c", "64", "-s"])
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fcgiwrap.log"))?)
        .spawn()
        .context("starting fcgiwrap (apt-get install fcgiwrap)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "fcgiwrap did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let nginx = spawn_nginx(&dir, &conf)?;
    let authority = format!("127.0.0.1:{port}");
    wait_for_port(&authority)?;
    let pids = vec![nginx.id(), fcgi.id()];
    Ok(Server {
        authority,
        main_pid: nginx.id(),
        pids,
        children: vec![nginx, fcgi],
    })
}

/// nginx serving `setup.static_dir` at `/static/` over HTTPS with `tls` (OpenSSL,
/// `sendfile` on as in the plaintext baseline; no kernel TLS, which Debian's nginx
/// leaves off by default).
pub fn nginx_static_tls(setup: &Setup, tls: &Tls) -> anyhow::Result<Server> {
    let (dir, port, conf) = nginx_dir(setup, "nginx-tls")?;
    std::fs::write(
        &conf,
        nginx_config(
            &dir,
            &format!(
                r#"  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location /static/ {{ alias {static_dir}/; }}
  }}
"#,
                cert = tls.cert.display(),
                key = tls.key.display(),
                static_dir = setup.static_dir.display(),
            ),
        ),
    )?;
    let nginx = spawn_nginx(&dir, &conf)?;
    let authority = format!("127.0.0.1:{port}");
    wait_for_port(&authority)?;
    Ok(Server::of(authority, vec![nginx]))
}

/// A fresh state directory `name` for an nginx, a free port for it, and where its
/// configuration goes.
fn nginx_dir(setup: &Setup, name: &str) -> anyhow::Result<(PathBuf, u16, PathBuf)> {
    let dir = setup.work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let conf = dir.join("nginx.conf");
    Ok((dir, free_port()?, conf))
}

/// An nginx configuration keeping all its state in `dir`, around `server` blocks.
fn nginx_config(dir: &Path, server: &str) -> String {
    format!(
        r#"daemon off;
{user}
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 0;
  client_body_temp_path {dir}/tmp/body;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  proxy_temp_path {dir}/tmp/proxy;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  sendfile on;
{server}}}
"#,
        dir = dir.display(),
        // Workers must reach fcgiwrap's socket; as root, keep them as root.
        user = if is_root() { "user root;" } else { "" },
    )
}

/// Start nginx with `conf`, its prefix `dir`.
fn spawn_nginx(dir: &Path, conf: &Path) -> anyhow::Result<Child> {
    Command::new("nginx")
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr"))?)
        .spawn()
        .context("starting nginx (apt-get install nginx)")
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

/// Is `name` a program in PATH?
pub fn installed(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
}
