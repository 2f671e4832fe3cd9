//! In-process waiters on promises, woken when one settles or its task halts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_id: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Waiters {
    /// Registers interest in `id`: the future completes when `id` is woken. Call it
    /// while holding the lock that orders the check of the promise's state against its
    /// settlement, so no wake-up is lost. Dropped unwoken, it takes its entry with it.
    pub(crate) fn register(&self, id: &str) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_owned()).or_default().push(tx);
        Waiter { waiters: self, id: id.to_owned(), rx: Some(rx) }
    }

    /// How many ids have waiters.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).len()
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

/// One registered wait; see [`Waiters::register`].
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    waiters: &'a Waiters,
    id: String,
    rx: Option<oneshot::Receiver<()>>,
}

impl Future for Waiter<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.rx.as_mut() {
            // A dropped sender means the store itself is gone; the caller reads again.
            Some(rx) => Pin::new(rx).poll(cx).map(drop),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut by_id = self.waiters.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = by_id.get_mut(&self.id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                by_id.remove(&self.id);
            }
        }
    }
}
