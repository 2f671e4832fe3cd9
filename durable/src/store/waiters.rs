//! In-process waiters on promises, woken when one settles or its task halts.

use std::collections::{BTreeMap, HashMap};
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

/// The ready signal of each group: bumped whenever a task of the group may have
/// become ready, so that only the workers who can take it wake. Each subscriber has a
/// channel of its own, woken in the order they subscribed: one channel shared by many
/// would wake them in an order of tokio's choosing, and a simulation could not replay
/// which worker claimed first.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    groups: Mutex<BTreeMap<String, Vec<tokio::sync::watch::Sender<u64>>>>,
}

impl Ready {
    /// A signal of `group`'s. One whose receiver is gone is dropped at the next bump.
    pub(crate) fn subscribe(&self, group: &str) -> tokio::sync::watch::Receiver<u64> {
        let (signal, receiver) = tokio::sync::watch::channel(0);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let signals = groups.entry(group.to_owned()).or_default();
        signals.retain(|s| !s.is_closed());
        signals.push(signal);
        receiver
    }

    /// Bumps the signals of `groups` that anyone listens to.
    pub(crate) fn bump<'a>(&self, groups: impl IntoIterator<Item = &'a str>) {
        let mut signals = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for group in groups {
            if let Some(list) = signals.get_mut(group) {
                bump(list);
            }
        }
    }

    /// Bumps every group's signal: each worker looks again for itself.
    #[cfg(feature = "postgres")]
    pub(crate) fn bump_all(&self) {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).values_mut().for_each(bump);
    }

    /// The groups anyone listens to.
    #[cfg(feature = "postgres")]
    pub(crate) fn groups(&self) -> Vec<String> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

/// Bumps each live signal of a group, in subscription order, and drops the rest.
fn bump(signals: &mut Vec<tokio::sync::watch::Sender<u64>>) {
    signals.retain(|s| !s.is_closed());
    for signal in signals.iter() {
        signal.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::Ready;

    #[test]
    fn a_bump_wakes_only_the_groups_it_names() {
        let ready = Ready::default();
        let (mut gpu, cpu) = (ready.subscribe("gpu"), ready.subscribe("cpu"));
        ready.bump(["gpu", "nobody listens"]);
        assert!(gpu.has_changed().unwrap(), "the named group is woken");
        assert!(!cpu.has_changed().unwrap(), "another group sleeps on");
        gpu.borrow_and_update();
        let cpu_again = ready.subscribe("cpu");
        ready.bump(["cpu"]);
        assert!(cpu.has_changed().unwrap() && cpu_again.has_changed().unwrap(), "every worker of the group wakes");
        assert!(!gpu.has_changed().unwrap());
    }

    #[test]
    fn a_gone_subscriber_is_forgotten() {
        let ready = Ready::default();
        let (kept, gone) = (ready.subscribe("gpu"), ready.subscribe("gpu"));
        drop(gone);
        ready.bump(["gpu"]);
        assert!(kept.has_changed().unwrap());
        assert_eq!(ready.groups.lock().unwrap()["gpu"].len(), 1, "only the live signal is kept");
    }
}
