//! History and resume (`--history`, `--history-len`): each MESSAGE carries its `x-stream-id`,
//! a SUBSCRIBE with `x-resume-from: <id>` first gets what followed that id, then the live
//! messages, none twice and none missing; an id the record no longer holds marks the first
//! MESSAGE with `x-resume-gap: true`; a malformed id is an ERROR for that session only. The
//! same contract on Redis Streams and on the in-process bus's in-memory record. Also the
//! per-session publish rate limit (`--max-publish-rate`).

use std::time::Duration;

use tether::app::stomp::{Command, Frame};

use crate::support::WAIT;
use crate::support::app::{TestApp, has_line};
use crate::support::redis::TestRedis;
use crate::support::stomp_client::StompClient;

const TOPIC: &str = "/topic/resume";

/// Publishes `bodies` to [`TOPIC`] through `/publish` of `app`, in order.
async fn publish_all(app: &TestApp, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        let r = app.publish(TOPIC, &body).await;
        assert_eq!(r.status, 202, "publish {body}: {}", r.body);
    }
}

/// The next `n` MESSAGEs: `(body, x-stream-id, x-resume-gap)`.
async fn next_messages(c: &mut StompClient, n: usize) -> Vec<(String, String, bool)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = c.next_message().await;
        let id = m.get("x-stream-id").unwrap_or_else(|| panic!("no x-stream-id on {m:?}")).to_owned();
        out.push((String::from_utf8(m.body.to_vec()).expect("UTF-8"), id, m.get("x-resume-gap") == Some("true")));
    }
    out
}

fn bodies(got: &[(String, String, bool)]) -> Vec<&str> {
    got.iter().map(|(b, _, _)| b.as_str()).collect()
}

fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// Two instances on one record: a client of `a` goes away after message 2, messages 3..6 are
/// published while it is away, it comes back on `b` resuming from message 2's id and gets 3..6
/// from the record, then 6..9 live, each once, in order; the ids it saw always grow.
async fn resume_across_instances(a: &TestApp, b: &TestApp) {
    let mut first = StompClient::connect(&a.ws_url()).await;
    first.subscribe(TOPIC, "s").await;
    publish_all(a, numbered(0..3)).await;
    let seen = next_messages(&mut first, 3).await;
    assert_eq!(bodies(&seen), ["0", "1", "2"]);
    assert!(seen.iter().all(|(_, _, gap)| !gap));
    drop(first);

    publish_all(b, numbered(3..6)).await;
    let mut again = StompClient::connect(&b.ws_url()).await;
    let last = seen[2].1.clone();
    again.subscribe_with(TOPIC, "s", &[("x-resume-from", &last)]).await;
    publish_all(a, numbered(6..9)).await;
    let resumed = next_messages(&mut again, 6).await;
    assert_eq!(bodies(&resumed), ["3", "4", "5", "6", "7", "8"]);
    assert!(resumed.iter().all(|(_, _, gap)| !gap), "{resumed:?}");
    let mut ids: Vec<&str> = seen.iter().chain(&resumed).map(|(_, id, _)| id.as_str()).collect();
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
        (ms.parse().expect("ms"), seq.parse().expect("seq"))
    };
    assert!(ids.windows(2).all(|w| parse(w[0]) < parse(w[1])), "ids grow: {ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 9);
    // Nothing more: no duplicate of the seam arrives later.
    let probe = again.send_with_receipt("/topic/elsewhere", "probe").await;
    assert_eq!(probe.command, Command::Receipt, "{probe:?}");
    assert_eq!(again.backlog_len(), 0, "nothing more (no duplicate) arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_subscription_gets_what_it_missed_then_live_once_each_over_redis_streams() {
    let redis = TestRedis::start().await;
    let spawn = |id: &'static str| TestApp::builder().id(id).redis(&redis.url()).history(Duration::from_secs(300));
    let a = spawn("app-a").spawn_with_redis_up().await;
    let b = spawn("app-b").spawn_with_redis_up().await;
    resume_across_instances(&a, &b).await;
    // The record is the Redis Stream named after the destination, trimmed by age.
    let len: i64 = redis.query(&["XLEN", "tether:stream:/topic/resume"]).await;
    assert_eq!(len, 9);
    let ttl: i64 = redis.query(&["PTTL", "tether:stream:/topic/resume"]).await;
    assert!(ttl > 0 && ttl <= 300_000, "an idle stream expires after the history: {ttl}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_bus_keeps_the_same_contract_with_an_in_memory_record() {
    let bus = tether::app::LocalBus::new();
    let a = TestApp::builder().id("app-a").bus(&bus).history_len(100).spawn().await;
    let b = TestApp::builder().id("app-b").bus(&bus).history_len(100).spawn().await;
    resume_across_instances(&a, &b).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// With `--history-len 5`, a client that missed 249 messages gets the ones still kept (on the
/// in-process bus exactly the last five; Redis trims approximately, whole stream nodes of 100
/// entries), the first marked `x-resume-gap: true`, then the live ones unmarked.
async fn gap_after_trim(app: &TestApp, exact: bool) {
    let mut c = StompClient::connect(&app.ws_url()).await;
    c.subscribe(TOPIC, "s").await;
    publish_all(app, numbered(0..1)).await;
    let seen = next_messages(&mut c, 1).await;
    drop(c);
    publish_all(app, numbered(1..250)).await;
    let mut again = StompClient::connect(&app.ws_url()).await;
    again.subscribe_with(TOPIC, "s", &[("x-resume-from", &seen[0].1)]).await;
    publish_all(app, numbered(250..251)).await;
    let first = next_messages(&mut again, 1).await;
    assert!(first[0].2, "the first message after a trimmed id is marked: {first:?}");
    let n: u32 = first[0].0.parse().expect("a number");
    if exact {
        assert_eq!(n, 245, "the last five of 1..250 are kept");
    } else {
        assert!(n > 1 && n <= 245, "trimmed to at least five: {n} first");
    }
    let rest = next_messages(&mut again, (251 - n - 1) as usize).await;
    assert_eq!(bodies(&rest), numbered(n + 1..251).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(rest.iter().all(|(_, _, gap)| !gap), "only the first is marked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_an_id_no_longer_kept_marks_the_first_message_with_a_gap() {
    let redis = TestRedis::start().await;
    let app = TestApp::builder().redis(&redis.url()).history_len(5).spawn_with_redis_up().await;
    gap_after_trim(&app, false).await;
    app.shutdown().await;
    let bus_app = TestApp::builder().history_len(5).spawn().await;
    gap_after_trim(&bus_app, true).await;
    bus_app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_resume_id_is_an_error_for_that_session_only() {
    let redis = TestRedis::start().await;
    let app = TestApp::builder().redis(&redis.url()).history_len(50).spawn_with_redis_up().await;
    let mut bystander = StompClient::connect(&app.ws_url()).await;
    bystander.subscribe(TOPIC, "s").await;
    for bad in ["", "abc", "1", "1-", "-1", "1-2-3", "99999999999999999999-0", "0x10-1", "1-1 2"] {
        let mut c = StompClient::connect(&app.ws_url()).await;
        let frame = Frame::new(Command::Subscribe)
            .header("destination", TOPIC)
            .header("id", "s")
            .header("x-resume-from", bad)
            .header("receipt", "r");
        c.send_frame(&frame).await;
        let answer = c.next_frame().await;
        assert_eq!(answer.command, Command::Error, "{bad:?}: {answer:?}");
        let message = answer.get("message").unwrap_or_default();
        assert!(message.contains("x-resume-from"), "{bad:?}: {message}");
        let (close, _) = c.expect_close(WAIT).await;
        assert!(close.is_some(), "{bad:?}: the session ends with a Close");
    }
    // Everyone else carries on.
    publish_all(&app, numbered(0..1)).await;
    assert_eq!(bystander.next_body().await, "0");
    // Resuming from an id that was never handed out (ahead of the record) is not an error
    // either, and does not hold back what follows: a gap, then the live messages.
    let mut ahead = StompClient::connect(&app.ws_url()).await;
    ahead.subscribe_with(TOPIC, "s", &[("x-resume-from", "99999999999999-0")]).await;
    publish_all(&app, numbered(1..3)).await;
    let got = next_messages(&mut ahead, 2).await;
    assert_eq!(got.iter().map(|(b, _, gap)| (b.as_str(), *gap)).collect::<Vec<_>>(), [("1", true), ("2", false)]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_its_publish_rate_gets_an_error_others_do_not() {
    let app = TestApp::builder().max_publish_rate(5).spawn().await;
    let mut listener = StompClient::connect(&app.ws_url()).await;
    listener.subscribe(TOPIC, "s").await;
    let mut polite = StompClient::connect(&app.ws_url()).await;
    let mut flooder = StompClient::connect(&app.ws_url()).await;
    // A burst of as many as the rate is allowed; the next one within the second is not.
    for i in 0..5 {
        let r = flooder.send_with_receipt(TOPIC, &format!("f{i}")).await;
        assert_eq!(r.command, Command::Receipt, "{i}: {r:?}");
    }
    let r = flooder.send_with_receipt(TOPIC, "f5").await;
    assert_eq!(r.command, Command::Error, "{r:?}");
    assert_eq!(r.get("message"), Some("publish rate exceeded"));
    let (close, _) = flooder.expect_close(WAIT).await;
    assert!(close.is_some());
    let r = polite.send_with_receipt(TOPIC, "p0").await;
    assert_eq!(r.command, Command::Receipt, "another session is not limited by the flooder: {r:?}");
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(listener.next_body().await);
        }
        v
    };
    assert_eq!(got, ["f0", "f1", "f2", "f3", "f4", "p0"], "the refused SEND was not published");
    assert!(has_line(&app.metrics().await, "tether_backend_publish_rate_limited_total 1"), "{}", app.metrics().await);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_misses_nothing_while_its_instance_resubscribes_after_losing_redis() {
    let redis = TestRedis::start().await;
    let spawn = |id: &'static str| TestApp::builder().id(id).redis(&redis.url()).history_len(10_000);
    let publisher = spawn("app-a").spawn_with_redis_up().await;
    let subscriber = spawn("app-b").spawn_with_redis_up().await;
    let mut client = StompClient::connect(&subscriber.ws_url()).await;
    client.subscribe(TOPIC, "s").await;

    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = publisher.publish_numbered_until(TOPIC, "", stop.clone());
    let interrupt = async {
        // A first message, so the subscription has a position in the stream.
        let mut got = vec![client.next_body().await];
        // Kill app-b's subscription connection only (the one subscribed to a channel): app-a
        // keeps publishing into the stream while app-b reconnects and subscribes again.
        let clients: String = redis.query(&["CLIENT", "LIST", "TYPE", "pubsub"]).await;
        let id = clients
            .lines()
            .find(|l| l.split_whitespace().any(|f| f == "sub=1"))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
            .unwrap_or_else(|| panic!("app-b's subscription connection in {clients}"))
            .to_owned();
        let killed: i64 = redis.query(&["CLIENT", "KILL", "ID", &id]).await;
        assert_eq!(killed, 1);
        crate::support::until("app-b to reconnect to Redis", async || {
            has_line(&subscriber.metrics().await, "tether_backend_redis_reconnects_total 1")
        })
        .await;
        // Twenty more after the resubscription, then stop publishing.
        let reconnected_at = got.len();
        while got.len() < reconnected_at + 20 {
            got.push(client.next_body().await);
        }
        stop.cancel();
        got
    };
    let (taken, mut got) = tokio::join!(publishing, interrupt);
    // Every message taken reaches the live subscriber exactly once, in order: those published
    // while its instance was resubscribing come from the stream.
    let expected: Vec<String> = taken.iter().map(u32::to_string).collect();
    client.expect_bodies(&mut got, &expected).await;
    let probe = client.send_with_receipt("/topic/elsewhere", "probe").await;
    assert_eq!(probe.command, Command::Receipt, "{probe:?}");
    assert_eq!(client.backlog_len(), 0, "nothing more (no duplicate) arrived");
    publisher.shutdown().await;
    subscriber.shutdown().await;
}
