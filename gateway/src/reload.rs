//! SIGHUP: re-read the config file and apply what can change while serving.
//!
//! Applied without dropping connections: `[auth]` (tokens, scopes, public
//! repositories, anonymous access, proxy secret), `[cache]` `max_age`,
//! `min_occurrences`, `max_bytes` and `min_free_bytes`, and remote nodes' `token`.
//! Everything else needs a restart; a reload that changes such a key says so in the
//! log and leaves it as it is. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use gitgate_storage_client::NodeClient;

use crate::config::{Config, NodeLocation};
use crate::state::AppState;

/// Reload on every SIGHUP until the task is dropped.
pub async fn on_sighup(path: PathBuf, running: Config, state: Arc<AppState>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; reloading is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(new) => apply(&running, &new, &state),
            Err(err) => tracing::error!(error = %err, "config reload failed; nothing changed"),
        }
    }
}

/// Apply the reloadable parts of `new`; warn about the rest.
pub fn apply(running: &Config, new: &Config, state: &AppState) {
    state.set_auth(new.auth.clone());
    if let Some(cache) = &state.cache {
        let c = &new.cache.cache;
        cache.reconfigure(c.max_age, c.min_occurrences, c.max_bytes, c.min_free_bytes);
    }
    for node in state.cluster.nodes().nodes() {
        let NodeClient::Remote(remote) = node else {
            continue;
        };
        let token = new.storage.nodes.iter().find_map(|n| match &n.location {
            NodeLocation::Remote { token, .. } if n.name == remote.name() => Some(token),
            _ => None,
        });
        if let Some(token) = token {
            remote.set_token(token);
        }
    }
    let mut restart = Vec::new();
    if running.listen.addr != new.listen.addr
        || running.listen.tls_cert != new.listen.tls_cert
        || running.listen.tls_key != new.listen.tls_key
    {
        restart.push("listen");
    }
    let nodes = |c: &Config| {
        c.storage
            .nodes
            .iter()
            .map(|n| format!("{}={:?}", n.name, location(&n.location)))
            .collect::<Vec<_>>()
    };
    let replication = |c: &Config| {
        let s = &c.storage;
        format!(
            "{} {} {:?} {} {:?} {:?} {:?}",
            s.create_on_push,
            s.replication_factor,
            s.replication,
            s.replication_workers,
            s.replication_retry_max,
            s.reconcile_interval,
            s.lock_timeout
        )
    };
    if nodes(running) != nodes(new) || replication(running) != replication(new) {
        restart.push("storage");
    }
    if running.metadata != new.metadata {
        restart.push("metadata");
    }
    if running.cache.enabled != new.cache.enabled || running.cache.cache.dir != new.cache.cache.dir
    {
        restart.push("cache.enabled/cache.dir");
    }
    if format!("{:?}", running.limits) != format!("{:?}", new.limits) {
        restart.push("limits");
    }
    if running.log.json != new.log.json || running.log.level != new.log.level {
        restart.push("log");
    }
    if restart.is_empty() {
        tracing::info!("configuration reloaded: auth, cache limits and node tokens applied");
    } else {
        tracing::warn!(needs_restart = ?restart, "configuration reloaded: auth, cache limits and node tokens applied; other changes need a restart");
    }
}

/// A node's location without its token, for comparing configs.
fn location(l: &NodeLocation) -> String {
    match l {
        NodeLocation::Local { path, git } => format!("{}:{}", path.display(), git.display()),
        NodeLocation::Remote { url, .. } => url.clone(),
    }
}
