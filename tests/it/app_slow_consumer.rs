//! A subscriber that stops reading overflows its outbound queue (bounded in bytes): it is sent
//! an ERROR and closed, and it never delays delivery to the others.

use std::sync::Arc;

use tether::app::stomp::Command;
use tokio::sync::Semaphore;

use crate::support::WAIT;
use crate::support::app::TestApp;
use crate::support::stomp_client::StompClient;

const TOPIC: &str = "/topic/flood";
/// 400 x 32 KiB = 12.8 MiB: several times what loopback socket buffers absorb for a reader that
/// never reads (its receive window stays small; the sender's buffer caps at 4 MiB here).
const MESSAGES: usize = 400;
const BODY_BYTES: usize = 32 * 1024;
/// Eight messages' worth: the fast reader, at most four behind, never fills it.
const QUEUE_BYTES: usize = 8 * BODY_BYTES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_never_delays_the_others() {
    let a = TestApp::builder().outbound_queue_bytes(QUEUE_BYTES).spawn().await;
    let mut slow = StompClient::connect(&a.ws_url()).await;
    slow.subscribe(TOPIC, "s").await;
    let mut fast = StompClient::connect(&a.ws_url()).await;
    fast.subscribe(TOPIC, "f").await;

    // The publisher stays at most IN_FLIGHT messages ahead of the fast reader, so the fast
    // reader's queue (8 messages' worth of bytes) can never fill: "fast" is then a fact, not
    // a race.
    const IN_FLIGHT: usize = 4;
    let credit = Arc::new(Semaphore::new(IN_FLIGHT));
    let reader_credit = credit.clone();
    let reader = tokio::spawn(async move {
        let mut bodies = Vec::with_capacity(MESSAGES);
        for _ in 0..MESSAGES {
            let m = fast.next_message().await;
            bodies.push(m.body.slice(..8));
            reader_credit.add_permits(1);
        }
        bodies
    });
    let mut publisher = StompClient::connect(&a.ws_url()).await;
    for i in 0..MESSAGES {
        tokio::time::timeout(WAIT, credit.acquire())
            .await
            .expect("the fast reader keeps up")
            .expect("semaphore open")
            .forget();
        let mut body = format!("{i:08}");
        body.push_str(&"x".repeat(BODY_BYTES - 8));
        publisher.send(TOPIC, &body).await;
    }
    let bodies = tokio::time::timeout(WAIT * 3, reader)
        .await
        .expect("the fast subscriber got everything in time")
        .expect("reader task");
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(&b[..], format!("{i:08}").as_bytes(), "message {i} out of order");
    }

    // The slow one reads now: what was already in flight, then the ERROR and the close.
    let (close, frames) = slow.expect_close(WAIT * 3).await;
    let (last, before) = frames.split_last().expect("at least the ERROR frame");
    assert!(before.iter().all(|f| f.command == Command::Message));
    assert!(before.len() < MESSAGES, "the slow consumer was not cut off");
    assert_eq!(last.command, Command::Error, "{last:?}");
    assert_eq!(last.get("message"), Some("slow consumer"));
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1013));

    let metrics = a.metrics().await;
    assert!(metrics.lines().any(|l| l == "tether_backend_slow_consumer_disconnects_total 1"), "{metrics}");
    a.shutdown().await;
}
