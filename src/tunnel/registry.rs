//! Which tunnels are open on a backend, so they can be counted, and closed gracefully on drain.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The handle a drain uses to ask one tunnel to close.
#[derive(Debug)]
pub struct TunnelControl {
    id: u64,
    /// WebSocket close code requested; 0 while none is.
    close_code: AtomicU16,
    /// The tunnel's task, woken when a close is requested (one slot: one task waits).
    waker: AtomicWaker,
    /// The affinity key the tunnel was routed by, for rebalancing.
    key: Option<Arc<str>>,
}

impl TunnelControl {
    /// The tunnel's number on its backend (registration order).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The affinity key the tunnel was routed by.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Ask the tunnel to end with a WebSocket Close carrying `code`. Later requests do not
    /// change the code of a close already under way.
    pub fn request_close(&self, code: u16) {
        if self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.waker.wake();
        }
    }

    /// The close code requested, if any.
    pub fn close_requested(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Ready with the code once a close has been requested; otherwise registers the task to be
    /// woken when one is.
    pub fn poll_close_requested(&self, cx: &mut Context<'_>) -> Poll<u16> {
        if let Some(code) = self.close_requested() {
            return Poll::Ready(code);
        }
        self.waker.register(cx.waker());
        // A request that raced with the registration is seen here.
        match self.close_requested() {
            Some(code) => Poll::Ready(code),
            None => Poll::Pending,
        }
    }

    /// Resolves once a close has been requested (immediately if one already was).
    pub async fn closed(&self) -> u16 {
        std::future::poll_fn(|cx| self.poll_close_requested(cx)).await
    }
}

/// Open tunnels of one backend.
#[derive(Debug)]
pub struct TunnelRegistry {
    open: Mutex<HashMap<u64, Arc<TunnelControl>>>,
    next_id: AtomicU64,
    /// Signalled when the last open tunnel ends.
    emptied: Arc<Notify>,
}

impl TunnelRegistry {
    /// An empty registry that signals `emptied` whenever its last tunnel ends.
    pub fn new(emptied: Arc<Notify>) -> Self {
        Self { open: Mutex::default(), next_id: AtomicU64::new(0), emptied }
    }

    /// Register a new tunnel; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, key: Option<Arc<str>>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(TunnelControl { id, close_code: AtomicU16::new(0), waker: AtomicWaker::new(), key });
        self.lock().insert(id, control.clone());
        Registration { registry: self.clone(), control }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// No tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open tunnels, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<Arc<TunnelControl>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<u64, Arc<TunnelControl>>> {
        self.open.lock()
    }
}

/// Keeps a tunnel listed while it is open.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<TunnelRegistry>,
    control: Arc<TunnelControl>,
}

impl Registration {
    /// The handle drains use to close this tunnel.
    pub fn control(&self) -> &Arc<TunnelControl> {
        &self.control
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.registry.lock();
        open.remove(&self.control.id);
        if open.is_empty() {
            self.registry.emptied.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registrations_are_listed_until_dropped_and_the_last_one_signals() {
        let emptied = Arc::new(Notify::new());
        let registry = Arc::new(TunnelRegistry::new(emptied.clone()));
        let a = registry.register(Some("alice".into()));
        let b = registry.register(None);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.snapshot()[0].key(), Some("alice"));
        drop(a);
        assert_eq!(registry.len(), 1);
        drop(b);
        assert!(registry.is_empty());
        // The last one out signals; the signal is kept until someone waits for it.
        tokio::time::timeout(std::time::Duration::from_secs(5), emptied.notified()).await.unwrap();
    }

    #[tokio::test]
    async fn the_first_close_request_wins_and_wakes_the_tunnel() {
        let registry = Arc::new(TunnelRegistry::new(Arc::default()));
        let reg = registry.register(None);
        let control = reg.control().clone();
        let waiter = tokio::spawn(async move { control.closed().await });
        reg.control().request_close(1001);
        reg.control().request_close(1012);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(reg.control().close_requested(), Some(1001));
    }
}
