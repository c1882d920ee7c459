//! Room on disk for the cache: the checks before an entry is made (the budget, then
//! free space) and the evictor's free-space pass. The budget itself, held as entries
//! grow, is the index's ([`crate::index::Index::enforce_budget`]).

use super::{BypassReason, Inner};

impl Inner {
    /// Evict old complete entries until a new one fits; `Some` if it still does not
    /// (I7: a full disk or budget is a bypass, never a failed fetch).
    pub(super) async fn make_room(&self) -> Option<BypassReason> {
        let max_bytes = self.index.budget();
        let min_free_bytes = self.config().min_free_bytes;
        while self.index.usage().get() >= max_bytes {
            if !self.index.evict_oldest("max_bytes") {
                return Some(BypassReason::OverBudget);
            }
        }
        if min_free_bytes == 0 {
            return None;
        }
        loop {
            let store = self.store.clone();
            let free = tokio::task::spawn_blocking(move || store.free_bytes()).await;
            match free {
                Ok(Ok(free)) if free >= min_free_bytes => return None,
                Ok(Ok(_)) => {
                    if !self.index.evict_oldest("low_disk") {
                        return Some(BypassReason::LowDiskSpace);
                    }
                }
                _ => return Some(BypassReason::StoreError),
            }
        }
    }

    /// Below `min_free_bytes` free, evict the oldest complete entry (one per call: the
    /// space comes back once its file is unlinked, in the background). Entries being
    /// written are not cut; new ones are not made meanwhile (`make_room`).
    pub(super) async fn keep_free_space(&self) {
        let min_free_bytes = self.config().min_free_bytes;
        if min_free_bytes == 0 || self.index.len() == 0 {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.free_bytes()).await {
            Ok(Ok(free)) if free < min_free_bytes => {
                self.index.evict_oldest("low_disk");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot check the pack cache's free space")
            }
            Err(err) => {
                tracing::warn!(error = %err, "the pack cache's free space check did not run")
            }
        }
    }
}
