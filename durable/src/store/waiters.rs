//! In-process waiters on promises, woken when one settles or its task halts.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_id: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Waiters {
    /// Registers interest in `id`. Call it while holding the lock that orders the check
    /// of the promise's state against its settlement, so no wake-up is lost.
    pub(crate) fn register(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let list = by_id.entry(id.to_owned()).or_default();
        list.retain(|tx| !tx.is_closed());
        list.push(tx);
        rx
    }

    /// Wakes every waiter, to look again for itself.
    #[cfg(feature = "postgres")]
    pub(crate) fn wake_all(&self) {
        let all: Vec<String> = self.by_id.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        self.wake(all);
    }

    pub(crate) fn wake(&self, ids: impl IntoIterator<Item = String>) {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            for tx in by_id.remove(&id).unwrap_or_default() {
                let _ = tx.send(());
            }
        }
    }
}
