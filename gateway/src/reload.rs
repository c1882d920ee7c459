//! SIGHUP: re-read the config file and apply what can change while serving.
//!
//! Applied without dropping connections: `[auth]` (tokens, scopes, public
//! repositories, anonymous access, proxy secret), `[cache]` `max_age`,
//! `min_occurrences`, `max_bytes` and `min_free_bytes`, and remote nodes' `token`.
//! Everything else needs a restart; a reload that changes such a key says so in the
//! log and leaves it as it is. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use gitgate_storage_client::{daemon, NodeClient};

use crate::config::{Config, NodeLocation, StorageConfig};
use crate::state::AppState;

/// Reload on every SIGHUP until the task is dropped.
pub async fn on_sighup(path: PathBuf, running: Config, state: Arc<AppState>) {
    daemon::on_sighup(|| async {
        match Config::load(&path).await {
            Ok(new) => apply(&running, &new, &state),
            Err(err) => tracing::error!(error = %err, "config reload failed; nothing changed"),
        }
    })
    .await;
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
    if running.listen != new.listen {
        restart.push("listen");
    }
    if without_tokens(&running.storage) != without_tokens(&new.storage) {
        restart.push("storage");
    }
    if running.metadata != new.metadata {
        restart.push("metadata");
    }
    if running.cache.enabled != new.cache.enabled || running.cache.cache.dir != new.cache.cache.dir
    {
        restart.push("cache.enabled/cache.dir");
    }
    if running.limits != new.limits {
        restart.push("limits");
    }
    if running.log != new.log {
        restart.push("log");
    }
    if running.cluster != new.cluster {
        restart.push("cluster");
    }
    if restart.is_empty() {
        tracing::info!("configuration reloaded: auth, cache limits and node tokens applied");
    } else {
        tracing::warn!(needs_restart = ?restart, "configuration reloaded: auth, cache limits and node tokens applied; other changes need a restart");
    }
}

/// `[storage]` with remote nodes' tokens blanked: the tokens are applied on reload,
/// everything else in the section needs a restart.
fn without_tokens(storage: &StorageConfig) -> StorageConfig {
    let mut storage = storage.clone();
    for node in &mut storage.nodes {
        if let NodeLocation::Remote { token, .. } = &mut node.location {
            token.clear();
        }
    }
    storage
}
