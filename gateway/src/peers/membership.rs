//! Staying in the fleet: a heartbeat that renews this gateway's registration and
//! rereads the live set, and leaving it when shutdown starts.

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;

use super::Peers;

/// The running heartbeat; [`Heartbeat::leave`] ends it and leaves the fleet.
pub struct Heartbeat {
    peers: Arc<Peers>,
    stop: Arc<tokio::sync::Notify>,
    task: AbortOnDropHandle<()>,
}

impl Peers {
    /// Renew the registration and refresh the live set every `cluster.heartbeat`. A
    /// failed heartbeat (or one slower than the heartbeat interval) keeps the last live
    /// set: the store being unreachable for a moment must not make every gateway think
    /// it is alone and generate every pack itself. Failures are counted in
    /// `gitgate_peer_heartbeat_failures_total`.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> Heartbeat {
        let peers = self.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(peers.settings.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                // Only the wait is given up on shutdown, never a renewal under way
                // (which could otherwise land after the leave).
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.notified() => return,
                }
                let renewal = peers.store.heartbeat(peers.me(), peers.settings.expiry);
                match tokio::time::timeout(peers.settings.heartbeat, renewal).await {
                    Ok(Ok(live)) => {
                        if failing {
                            tracing::info!("fleet heartbeat recovered");
                            failing = false;
                        }
                        let before = peers.live();
                        peers.set_live(live);
                        let after = peers.live();
                        if before != after {
                            tracing::info!(live = ?after, "fleet membership changed");
                        }
                    }
                    failed => {
                        peers.metrics.heartbeat_failures.inc();
                        if !failing {
                            let error = match failed {
                                Ok(Err(err)) => err.to_string(),
                                _ => "timed out".to_owned(),
                            };
                            tracing::warn!(%error, "fleet heartbeat failed; keeping the last live set");
                            failing = true;
                        }
                    }
                }
            }
        }));
        Heartbeat {
            peers: self.clone(),
            stop,
            task,
        }
    }
}

impl Heartbeat {
    /// Stop renewing and leave the live set at once (shutdown starts), so peers stop
    /// choosing this gateway as an owner while it drains.
    pub async fn leave(self) {
        self.stop.notify_one();
        // A renewal under way finishes first (bounded by its timeout).
        let _ = self.task.await;
        if let Err(err) = self.peers.store.leave(self.peers.me()).await {
            tracing::warn!(error = %err, "could not leave the fleet; peers will notice at expiry");
        } else {
            tracing::info!("left the fleet");
        }
    }
}
