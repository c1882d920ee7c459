//! Staying in the fleet: a heartbeat that renews this gateway's registration and
//! rereads the live set, and leaving it on shutdown.

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;

use super::Peers;

impl Peers {
    /// Renew the registration and refresh the live set every `cluster.heartbeat` until
    /// the returned handle is dropped. A failed heartbeat keeps the last live set: the
    /// store being unreachable for a moment must not make every gateway think it is
    /// alone (and generate every pack itself).
    pub fn spawn_heartbeat(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let peers = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(peers.settings.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match peers
                    .store
                    .heartbeat(peers.me(), peers.settings.expiry)
                    .await
                {
                    Ok(live) => {
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
                    Err(err) => {
                        if !failing {
                            tracing::warn!(error = %err, "fleet heartbeat failed; keeping the last live set");
                            failing = true;
                        }
                    }
                }
            }
        }))
    }

    /// Leave the live set at once (shutdown), so peers stop forwarding here before the
    /// registration would have expired.
    pub async fn leave(&self) {
        if let Err(err) = self.store.leave(self.me()).await {
            tracing::warn!(error = %err, "could not leave the fleet; peers will notice at expiry");
        }
    }
}
