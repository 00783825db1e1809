//! [`ServerRuntime`]: a Tokio runtime on its own thread for a server under test (the proxy,
//! the reference app), so that the test can tell the server's panics from its own and stop
//! everything the server spawned without awaiting anything.
//!
//! Every thread of the runtime carries the runtime's name; a process-wide panic hook records a
//! panic on such a thread against that runtime. Dropping the runtime fails the test if the
//! server panicked (unless the test is failing already), then shuts the runtime down in the
//! background: its tasks, sockets and listeners go away without the test waiting for them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Thread names of server runtimes start with this, followed by the runtime's number.
const THREAD_PREFIX: &str = "test-server-";

/// Panics seen on server runtime threads, by runtime number.
static PANICS: Mutex<Option<HashMap<u64, Vec<String>>>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(1);
static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(n) = thread.name().and_then(|n| n.strip_prefix(THREAD_PREFIX)).and_then(|n| n.parse().ok()) {
                let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
                panics.get_or_insert_with(HashMap::new).entry(n).or_default().push(info.to_string());
            }
            previous(info);
        }));
    });
}

pub struct ServerRuntime {
    what: String,
    number: u64,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl ServerRuntime {
    /// A two-worker runtime for `what` (named in failure messages), running until dropped.
    pub fn start(what: &str) -> Self {
        install_hook();
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{THREAD_PREFIX}{number}"))
            .enable_all()
            .build()
            .expect("build a server runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}{number}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })
            .expect("spawn the server runtime thread");
        Self { what: what.to_owned(), number, handle, stop: Some(stop) }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run `fut` on this runtime and wait for it; a panic in it fails the test here.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(fut).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("{}: task failed: {e}", self.what),
        }
    }

    /// Panics so far on this runtime's threads.
    pub fn panics(&self) -> Vec<String> {
        let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        panics.as_ref().and_then(|p| p.get(&self.number)).cloned().unwrap_or_default()
    }

    /// Fail the test if the server panicked.
    pub fn assert_no_panic(&self) {
        let panics = self.panics();
        assert!(panics.is_empty(), "{} panicked:\n{}", self.what, panics.join("\n"));
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !std::thread::panicking() {
            self.assert_no_panic();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_of_a_server_task_fails_the_test_when_the_server_is_dropped() {
    let runtime = ServerRuntime::start("a server that panics");
    let task = runtime.handle().spawn(async { panic!("a bug in the server") });
    assert!(task.await.expect_err("the task panicked").is_panic());
    assert_eq!(runtime.panics().len(), 1, "the panic is recorded against its runtime");
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(runtime)));
    let failure = dropped.expect_err("dropping the server fails the test");
    let message = failure.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("a server that panics panicked") && message.contains("a bug in the server"), "{message}");
}
