//! A flight's memory: the bytes it keeps so that it can land in an entry, within its own
//! limit ([`FLIGHT_BYTES`]) and the budget all live flights share ([`FLIGHTS_BUDGET`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{Recorded, FLIGHTS_BUDGET, FLIGHT_BYTES};

/// What a flight keeps, counted against the shared budget.
pub(super) struct Kept {
    chunks: Vec<Bytes>,
    pub(super) len: u64,
    /// False once something was not kept: the bytes no longer cover the stream.
    pub(super) whole: bool,
    budget: Arc<AtomicU64>,
}

impl Kept {
    pub(super) fn new(budget: Arc<AtomicU64>) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            whole: true,
            budget,
        }
    }

    /// Keep `chunk` if this flight and the budget allow; false once it cannot.
    pub(super) fn keep(&mut self, chunk: &Bytes) -> bool {
        if !self.whole {
            return false;
        }
        let n = chunk.len() as u64;
        let fits = self.len + n <= FLIGHT_BYTES
            && self
                .budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + n <= FLIGHTS_BUDGET).then_some(used + n)
                })
                .is_ok();
        if !fits {
            self.release();
            return false;
        }
        self.chunks.push(chunk.clone());
        self.len += n;
        true
    }

    /// Give the memory back; nothing is kept from here on.
    pub(super) fn release(&mut self) {
        self.budget.fetch_sub(self.len, Ordering::AcqRel);
        self.chunks = Vec::new();
        self.len = 0;
        self.whole = false;
    }

    /// The kept bytes, moved out (the budget is given back).
    pub(super) fn take(&mut self) -> Recorded {
        let recorded = Recorded {
            chunks: std::mem::take(&mut self.chunks),
            len: self.len,
        };
        self.budget.fetch_sub(self.len, Ordering::AcqRel);
        self.len = 0;
        self.whole = false;
        recorded
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.len, Ordering::AcqRel);
    }
}
