//! One SockJS session: the queue of frames for the client, the receiver currently attached
//! (an open polling or streaming response, or a WebSocket), the inbound messages for the STOMP
//! session, expiry, and the registry of sessions by id.
//!
//! The STOMP session on top never sees HTTP: it pushes frames with [`SockSession::push`] and
//! reads messages from its [`SockLink`]. Receivers take frames with
//! [`SockSession::take_frames`]. A session with no receiver for the disconnect delay is gone
//! (the client left); a closed one answers its close frame to every request until it is
//! removed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::frame;

/// Messages (STOMP frames) queued for a client that is not fetching them. The STOMP session's
/// own outbound queue bounds deliveries before this; past this, its writes wait.
const QUEUE_LIMIT: usize = 1024;
/// Batches of client messages waiting for the STOMP session.
const INBOUND_BATCHES: usize = 64;

/// What a receiver gets from [`SockSession::take_frames`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Frames to write, in order (`o`, `a[...]`, then `c[...]` when closed).
    Frames(Vec<String>),
    /// Nothing yet.
    Empty,
}

#[derive(Debug)]
struct Inner {
    opened: bool,
    queue: VecDeque<String>,
    /// `c[...]` once the session is closed.
    close: Option<String>,
    /// Whether the close frame reached a receiver at least once.
    close_sent: bool,
    receiver: bool,
    /// When the last receiver detached (or the session was created).
    detached_at: Instant,
    /// The client's side is gone (its WebSocket closed, or it stayed away too long).
    gone: bool,
}

/// One session; shared by its receivers and its STOMP session.
#[derive(Debug)]
pub(crate) struct SockSession {
    pub(crate) id: String,
    inner: Mutex<Inner>,
    /// Frames were queued, the session closed, or the client went away.
    changed: Notify,
    /// The queue has room again.
    room: Notify,
    inbound: mpsc::Sender<Vec<String>>,
}

/// The STOMP session's end of a SockJS session.
#[derive(Debug)]
pub(crate) struct SockLink {
    pub(crate) session: Arc<SockSession>,
    pub(crate) inbound: mpsc::Receiver<Vec<String>>,
}

/// A second receiver while one is attached.
#[derive(Debug)]
pub(crate) struct Busy;

impl SockSession {
    pub(crate) fn new(id: String) -> (Arc<SockSession>, SockLink) {
        let (tx, rx) = mpsc::channel(INBOUND_BATCHES);
        let session = Arc::new(SockSession {
            id,
            inner: Mutex::new(Inner {
                opened: false,
                queue: VecDeque::new(),
                close: None,
                close_sent: false,
                receiver: false,
                detached_at: Instant::now(),
                gone: false,
            }),
            changed: Notify::new(),
            room: Notify::new(),
            inbound: tx,
        });
        (session.clone(), SockLink { session, inbound: rx })
    }

    /// Attaches a receiver; Err while another one is attached (the caller answers
    /// `c[2010,...]`). The guard detaches on drop.
    pub(crate) fn attach(self: &Arc<Self>) -> Result<Attached, Busy> {
        let mut inner = self.inner.lock();
        if inner.receiver && inner.close.is_none() {
            return Err(Busy);
        }
        inner.receiver = true;
        Ok(Attached { session: self.clone() })
    }

    /// Everything due for the client: the open frame first, queued messages as one array,
    /// the close frame last.
    pub(crate) fn take_frames(&self) -> Take {
        let mut inner = self.inner.lock();
        let mut frames = Vec::new();
        if !inner.opened {
            inner.opened = true;
            frames.push(frame::OPEN.to_owned());
        }
        if !inner.queue.is_empty() {
            let batch: Vec<String> = inner.queue.drain(..).collect();
            frames.push(frame::messages(&batch));
            self.room.notify_waiters();
        }
        if let Some(close) = &inner.close {
            frames.push(close.clone());
            inner.close_sent = true;
            self.changed.notify_waiters();
        }
        if frames.is_empty() { Take::Empty } else { Take::Frames(frames) }
    }

    /// Waits until something is due or `heartbeat` passes; false on timeout.
    pub(crate) async fn wait_for_frames(&self, heartbeat: Duration) -> bool {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let inner = self.inner.lock();
            if !inner.opened || !inner.queue.is_empty() || inner.close.is_some() {
                return true;
            }
        }
        tokio::time::timeout(heartbeat, changed).await.is_ok()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Queues STOMP frames for the client, waiting (up to `timeout`) while the queue is full.
    /// Err when the session is closed or the client does not fetch in time.
    pub(crate) async fn push(&self, messages: Vec<String>, timeout: Duration) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut inner = self.inner.lock();
                if inner.close.is_some() || inner.gone {
                    return Err(());
                }
                if inner.queue.len() < QUEUE_LIMIT {
                    inner.queue.extend(messages);
                    self.changed.notify_waiters();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(());
            }
        }
    }

    /// Closes the session: `last` (a final STOMP frame) and then `c[code,reason]` are what
    /// receivers get from now on.
    pub(crate) fn close(&self, code: u16, reason: &str, last: Option<String>) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return;
        }
        if let Some(last) = last {
            inner.queue.push_back(last);
        }
        inner.close = Some(frame::close(code, reason));
        self.changed.notify_waiters();
    }

    /// Hands client messages to the STOMP session, waiting while it is behind. Err when the
    /// session is gone.
    pub(crate) async fn receive(&self, messages: Vec<String>) -> Result<(), ()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.inbound.send(messages).await.map_err(|_| ())
    }

    /// The client's side is gone for good (its WebSocket closed).
    pub(crate) fn client_gone(&self) {
        self.inner.lock().gone = true;
        self.changed.notify_waiters();
    }

    /// Resolves once the client is gone: no receiver for `delay`, or [`Self::client_gone`].
    pub(crate) async fn expired(&self, delay: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let due = {
                let inner = self.inner.lock();
                if inner.gone {
                    return;
                }
                (!inner.receiver).then(|| inner.detached_at + delay)
            };
            match due {
                Some(at) if Instant::now() >= at => return,
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, changed).await;
                }
                None => changed.await,
            }
        }
    }

    /// After closing: resolves once a receiver got the close frame, or after `delay`.
    pub(crate) async fn close_delivered(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let inner = self.inner.lock();
                if inner.close_sent || inner.gone {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }
}

/// An attached receiver; detaches on drop.
#[derive(Debug)]
pub(crate) struct Attached {
    session: Arc<SockSession>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut inner = self.session.inner.lock();
        inner.receiver = false;
        inner.detached_at = Instant::now();
        self.session.changed.notify_waiters();
    }
}

/// Live sessions by id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Arc<SockSession>>>,
}

impl Registry {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<SockSession>> {
        self.sessions.lock().get(id).cloned()
    }

    /// The session `id`, or a new one (and its link) when there is none.
    pub(crate) fn get_or_create(&self, id: &str) -> (Arc<SockSession>, Option<SockLink>) {
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get(id) {
            return (s.clone(), None);
        }
        let (session, link) = SockSession::new(id.to_owned());
        sessions.insert(id.to_owned(), session.clone());
        (session, Some(link))
    }

    /// Removes `session` (only that one: the id may have been reused since).
    pub(crate) fn remove(&self, session: &Arc<SockSession>) {
        let mut sessions = self.sessions.lock();
        if sessions.get(&session.id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&session.id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_open_first_then_one_array_then_close() {
        let (s, _link) = SockSession::new("x".into());
        let _r = s.attach().unwrap();
        assert!(matches!(s.attach(), Err(Busy)), "one receiver at a time");
        assert_eq!(s.take_frames(), Take::Frames(vec!["o".into()]));
        assert_eq!(s.take_frames(), Take::Empty);
        s.push(vec!["a\0".into(), "b\0".into()], Duration::from_secs(1)).await.unwrap();
        assert_eq!(s.take_frames(), Take::Frames(vec![r#"a["a\u0000","b\u0000"]"#.into()]));
        s.close(1000, "bye", Some("RECEIPT".into()));
        let closed = Take::Frames(vec![r#"a["RECEIPT"]"#.into(), r#"c[1000,"bye"]"#.into()]);
        assert_eq!(s.take_frames(), closed);
        // Every later request gets the close frame again.
        assert_eq!(s.take_frames(), Take::Frames(vec![r#"c[1000,"bye"]"#.into()]));
        assert!(s.push(vec!["late".into()], Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_a_receiver_expires_after_the_delay() {
        let (s, _link) = SockSession::new("x".into());
        let delay = Duration::from_secs(5);
        let started = Instant::now();
        {
            let _r = s.attach().unwrap();
            // Attached: no expiry however long it takes.
            assert!(tokio::time::timeout(Duration::from_secs(60), s.expired(delay)).await.is_err());
        }
        let detached = Instant::now();
        s.expired(delay).await;
        assert_eq!(Instant::now() - detached, delay);
        assert!(detached - started >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_receivers_wake_on_frames_and_time_out_for_heartbeats() {
        let (s, _link) = SockSession::new("x".into());
        assert!(s.wait_for_frames(Duration::from_secs(25)).await, "the open frame is due");
        s.take_frames();
        let before = Instant::now();
        assert!(!s.wait_for_frames(Duration::from_secs(25)).await);
        assert_eq!(Instant::now() - before, Duration::from_secs(25));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait_for_frames(Duration::from_secs(25)).await });
        tokio::task::yield_now().await;
        s.push(vec!["m".into()], Duration::from_secs(1)).await.unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn the_registry_creates_once_and_removes_only_the_same_session() {
        let r = Registry::default();
        let (a, link) = r.get_or_create("s1");
        assert!(link.is_some());
        let (a2, link2) = r.get_or_create("s1");
        assert!(link2.is_none() && Arc::ptr_eq(&a, &a2));
        let (other, _) = SockSession::new("s1".into());
        r.remove(&other);
        assert_eq!(r.len(), 1);
        r.remove(&a);
        assert!(r.get("s1").is_none());
    }
}
