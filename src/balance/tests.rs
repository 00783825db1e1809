//! Behaviour of the whole decision: balance and movement figures of the ring, availability,
//! panic mode, bounded loads, sticky cookies, fallbacks, and robustness on arbitrary input.

use std::collections::BTreeSet;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::keys::MAX_KEY_BYTES;
use super::*;
use crate::config::{AffinityConfig, CookieConfig, Fallback, HashConfig, KeySource, SameSite, SecureMode, TokenSource};

const DEFAULT_VNODES: u32 = 1000;
const COOKIE_NAME: &str = "TETHER_AFFINITY";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn cookie_key() -> CookieKey {
    CookieKey::from_bytes(&[42; 32]).expect("32 bytes")
}

fn hash_config(vnodes: u32, balance_factor: f64) -> HashConfig {
    HashConfig { vnodes, balance_factor }
}

fn members(ids: &[&str]) -> Vec<Member> {
    ids.iter().map(|id| Member::new(*id, 1, Availability::Active)).collect()
}

fn set_of(ids: &[&str]) -> BackendSet {
    BackendSet::new(members(ids), &hash_config(DEFAULT_VNODES, 0.0), &cookie_key())
}

fn cookie_config() -> CookieConfig {
    CookieConfig {
        name: COOKIE_NAME.into(),
        ttl: Duration::ZERO,
        secure: SecureMode::Auto,
        http_only: true,
        same_site: SameSite::Lax,
        path: "/".into(),
        domain: None,
        key_env: None,
    }
}

fn user_header() -> KeySource {
    KeySource::Header(HeaderName::from_static("x-user-id"))
}

fn policy(
    keys: Vec<KeySource>,
    cookie: Option<CookieConfig>,
    fallback: Fallback,
    balance_factor: f64,
) -> AffinityPolicy {
    let config = AffinityConfig { keys, hash: hash_config(DEFAULT_VNODES, balance_factor), cookie, fallback };
    AffinityPolicy::new(&config, cookie_key()).expect("valid test policy")
}

fn key_policy() -> AffinityPolicy {
    policy(vec![user_header()], Some(cookie_config()), Fallback::LeastConnections, 0.0)
}

fn cookie_policy(fallback: Fallback) -> AffinityPolicy {
    policy(vec![user_header()], Some(cookie_config()), fallback, 0.0)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn decide_at(
    policy: &AffinityPolicy,
    set: &BackendSet,
    headers: &HeaderMap,
    at: SystemTime,
    rng: &mut StdRng,
) -> Decision {
    let facts = RequestFacts { headers, query: None, path: "/", verified: None };
    route(&facts, policy, set, at, rng)
}

fn decide(policy: &AffinityPolicy, set: &BackendSet, headers: &HeaderMap) -> Decision {
    decide_at(policy, set, headers, now(), &mut StdRng::seed_from_u64(7))
}

fn first(decision: &mut Decision, set: &BackendSet) -> Option<usize> {
    decision.next_candidate(set).map(|(i, _guard)| i)
}

/// Every candidate a decision hands out, in order (guards released as it goes).
fn all_candidates(decision: &mut Decision, set: &BackendSet) -> Vec<usize> {
    std::iter::from_fn(|| decision.next_candidate(set).map(|(i, _)| i)).collect()
}

fn id(set: &BackendSet, i: usize) -> &str {
    set.members()[i].id.as_str()
}

fn primary(set: &BackendSet, key: &str) -> usize {
    set.ring_order(key).next().expect("non-empty set")
}

fn random_keys(seed: u64, count: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count).map(|_| format!("u{:x}", rng.next_u64())).collect()
}

/// max/mean of the primaries of `keys`.
fn max_over_mean(set: &BackendSet, keys: &[String]) -> f64 {
    let mut counts = vec![0usize; set.len()];
    for key in keys {
        counts[primary(set, key)] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    max as f64 * set.len() as f64 / keys.len() as f64
}

/// The set-cookie value's `name=value` part, as a request `Cookie` header.
fn as_request_cookie(set_cookie: &HeaderValue) -> String {
    let text = set_cookie.to_str().expect("ASCII");
    text.split(';').next().expect("name=value").to_owned()
}

static WORST_RANDOM_NAMES: Mutex<f64> = Mutex::new(0.0);

// ---------------------------------------------------------------------------------------------
// Ring figures

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20,
        rng_seed: RngSeed::Fixed(0x7e7e_0002),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// 100,000 random keys over 3..=10 equal backends with random names: max/mean <= 1.15.
    #[test]
    fn random_names_balance_within_1_15_at_default_vnodes(
        names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,15}", 3..=10),
        key_seed in any::<u64>(),
    ) {
        let ids: Vec<&str> = names.iter().map(String::as_str).collect();
        let set = set_of(&ids);
        let ratio = max_over_mean(&set, &random_keys(key_seed, 100_000));
        let mut worst = WORST_RANDOM_NAMES.lock().expect("no test panics while holding it");
        if ratio > *worst {
            *worst = ratio;
            eprintln!("balance: worst max/mean so far {ratio:.4} over {} backends {ids:?}", ids.len());
        }
        prop_assert!(ratio <= 1.15, "max/mean {ratio} for {ids:?}");
    }

    /// Adding a backend moves at most 1/(N+1) + 0.03 of the keys, all of them to the new
    /// backend; removing one moves exactly the keys that were on it.
    #[test]
    fn adding_moves_keys_only_to_the_new_backend_and_removing_only_its_keys(
        names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,15}", 4..=10),
        added_pick in any::<proptest::sample::Index>(),
        removed_pick in any::<proptest::sample::Index>(),
        key_seed in any::<u64>(),
    ) {
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let added = all[added_pick.index(all.len())];
        let before_ids: Vec<&str> = all.iter().copied().filter(|n| *n != added).collect();
        let before = set_of(&before_ids);
        let after = set_of(&all);
        let keys = random_keys(key_seed, 20_000);
        let mut moved = 0usize;
        for key in &keys {
            let (b, a) = (id(&before, primary(&before, key)), id(&after, primary(&after, key)));
            if b != a {
                moved += 1;
                prop_assert_eq!(a, added, "key {} moved from {} to {}, not to the new backend", key, b, a);
            }
        }
        let n = before_ids.len() as f64;
        let fraction = moved as f64 / keys.len() as f64;
        prop_assert!(fraction <= 1.0 / (n + 1.0) + 0.03, "moved {fraction} with N = {n}");

        let removed = all[removed_pick.index(all.len())];
        let remaining: Vec<&str> = all.iter().copied().filter(|n| *n != removed).collect();
        let shrunk = set_of(&remaining);
        for key in &keys {
            let (was, now) = (id(&after, primary(&after, key)), id(&shrunk, primary(&shrunk, key)));
            prop_assert_eq!(was != removed, was == now, "key {} was on {}, now on {}", key, was, now);
        }
    }
}

#[test]
fn app_names_balance_within_1_10_at_default_vnodes() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let ratio = max_over_mean(&set, &random_keys(1, 100_000));
    eprintln!("balance: app-1..3 max/mean {ratio:.4}");
    assert!(ratio <= 1.10, "max/mean {ratio}");
}

#[test]
fn a_weight_two_backend_gets_about_twice_the_keys() {
    let mut ms = members(&["app-1", "app-2", "app-3"]);
    ms[0].weight = 2;
    let set = BackendSet::new(ms, &hash_config(DEFAULT_VNODES, 0.0), &cookie_key());
    assert_eq!(set.vnodes(), 4000);
    let mut counts = [0usize; 3];
    for key in random_keys(2, 100_000) {
        counts[primary(&set, &key)] += 1;
    }
    for other in [counts[1], counts[2]] {
        let ratio = counts[0] as f64 / other as f64;
        assert!((1.8..=2.2).contains(&ratio), "counts {counts:?}");
    }
}

#[test]
fn independently_built_sets_map_every_key_identically_whatever_the_member_order() {
    let ids = ["web-a", "web-b", "web-c", "web-d", "web-e"];
    let forward = set_of(&ids);
    let mut reversed_ids = ids;
    reversed_ids.reverse();
    let reversed = set_of(&reversed_ids);
    for key in random_keys(3, 5_000) {
        let a: Vec<&str> = forward.ring_order(&key).map(|i| id(&forward, i)).collect();
        let b: Vec<&str> = reversed.ring_order(&key).map(|i| id(&reversed, i)).collect();
        assert_eq!(a, b, "key {key}");
    }
}

/// The mapping itself is a contract (two proxy replicas, or two releases, must agree): any
/// change of hash, keys or ring algorithm fails here.
#[test]
fn mapping_of_fixed_keys_matches_the_golden_table() {
    let set = set_of(&["app-1", "app-2", "app-3", "app-4", "app-5"]);
    for (key, expected) in GOLDEN {
        let order: Vec<&str> = set.ring_order(key).map(|i| id(&set, i)).collect();
        assert_eq!(order, expected, "key {key:?}");
    }
}

/// Ring order of fixed keys over `app-1..app-5` at the default vnodes, recorded once.
const GOLDEN: [(&str, [&str; 5]); 14] = [
    ("alice", ["app-1", "app-4", "app-3", "app-5", "app-2"]),
    ("bob", ["app-2", "app-4", "app-1", "app-5", "app-3"]),
    ("carol", ["app-2", "app-4", "app-3", "app-5", "app-1"]),
    ("dave", ["app-4", "app-3", "app-5", "app-2", "app-1"]),
    ("erin", ["app-4", "app-5", "app-1", "app-2", "app-3"]),
    ("frank", ["app-3", "app-4", "app-1", "app-5", "app-2"]),
    ("", ["app-5", "app-3", "app-4", "app-2", "app-1"]),
    ("user-1", ["app-4", "app-5", "app-1", "app-2", "app-3"]),
    ("user-2", ["app-1", "app-2", "app-5", "app-3", "app-4"]),
    ("user-3", ["app-1", "app-4", "app-5", "app-2", "app-3"]),
    ("42", ["app-3", "app-4", "app-1", "app-2", "app-5"]),
    ("élodie", ["app-2", "app-1", "app-5", "app-4", "app-3"]),
    ("a-much-longer-user-identifier-0001", ["app-1", "app-3", "app-5", "app-4", "app-2"]),
    ("tenant:7/user:99", ["app-3", "app-4", "app-2", "app-1", "app-5"]),
];

#[test]
fn ring_order_is_distinct_complete_and_starts_at_the_primary() {
    let set = set_of(&["a", "b", "c", "d", "e", "f", "g"]);
    for key in random_keys(4, 500) {
        let order: Vec<usize> = set.ring_order(&key).collect();
        let distinct: BTreeSet<usize> = order.iter().copied().collect();
        assert_eq!(order.len(), 7);
        assert_eq!(distinct.len(), 7);
        let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", &key)]));
        assert_eq!(first(&mut d, &set), Some(order[0]));
    }
}

#[test]
fn an_empty_set_routes_nowhere() {
    let set = set_of(&[]);
    assert_eq!(set.ring_order("alice").next(), None);
    assert_eq!(set.home_of("alice"), None);
    let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", "alice")]));
    assert!(d.next_candidate(&set).is_none());
    let mut d = decide(&key_policy(), &set, &HeaderMap::new());
    assert!(d.next_candidate(&set).is_none());
}

// ---------------------------------------------------------------------------------------------
// Availability, fail-over, panic mode

#[test]
fn unusable_primary_yields_the_next_ring_candidate_and_the_key_returns_when_active() {
    let set = set_of(&["app-1", "app-2", "app-3", "app-4"]);
    let policy = key_policy();
    let h = headers(&[("x-user-id", "alice")]);
    let order: Vec<usize> = set.ring_order("alice").collect();
    for state in [Availability::Down, Availability::Ejected, Availability::Joining, Availability::Draining] {
        set.members()[order[0]].live.set_availability(state);
        let mut d = decide(&policy, &set, &h);
        assert_eq!(d.reason(), Reason::Key);
        assert_eq!(d.key(), Some("alice"));
        assert!(!d.is_panic());
        assert_eq!(first(&mut d, &set), Some(order[1]), "primary {state}");
        assert_eq!(set.home_of("alice"), Some(order[1]));
        set.members()[order[0]].live.set_availability(Availability::Active);
        let mut d = decide(&policy, &set, &h);
        assert_eq!(first(&mut d, &set), Some(order[0]), "back after {state}");
    }
}

#[test]
fn fail_over_walks_the_usable_ring_order_once_with_loads_reserved() {
    let set = set_of(&["app-1", "app-2", "app-3", "app-4"]);
    let order: Vec<usize> = set.ring_order("bob").collect();
    set.members()[order[2]].live.set_availability(Availability::Down);
    let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", "bob")]));
    let mut held = Vec::new();
    while let Some((i, guard)) = d.next_candidate(&set) {
        assert_eq!(set.members()[i].live.load(), 1);
        held.push((i, guard));
    }
    let got: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
    assert_eq!(got, vec![order[0], order[1], order[3]]);
    drop(held);
    assert!(set.members().iter().all(|m| m.live.load() == 0));
}

#[test]
fn panic_mode_uses_draining_members_only_when_none_is_active() {
    let set = set_of(&["app-1", "app-2", "app-3", "app-4"]);
    let order: Vec<usize> = set.ring_order("carol").collect();
    let states = [Availability::Draining, Availability::Down, Availability::Draining, Availability::Ejected];
    for (i, state) in order.iter().zip(states) {
        set.members()[*i].live.set_availability(state);
    }
    assert_eq!(set.new_session_state(), Some(Availability::Draining));
    let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", "carol")]));
    assert!(d.is_panic());
    assert_eq!(all_candidates(&mut d, &set), vec![order[0], order[2]]);

    let mut d = decide(&cookie_policy(Fallback::LeastConnections), &set, &HeaderMap::new());
    assert!(d.is_panic());
    let got: BTreeSet<usize> = all_candidates(&mut d, &set).into_iter().collect();
    assert_eq!(got, BTreeSet::from([order[0], order[2]]));

    // One Active member ends panic mode: the draining ones get nothing new.
    set.members()[order[3]].live.set_availability(Availability::Active);
    let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", "carol")]));
    assert!(!d.is_panic());
    assert_eq!(all_candidates(&mut d, &set), vec![order[3]]);
}

#[test]
fn nothing_usable_gives_no_candidate_at_once() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let states = [Availability::Down, Availability::Ejected, Availability::Joining];
    for (m, state) in set.members().iter().zip(states) {
        m.live.set_availability(state);
    }
    assert_eq!(set.new_session_state(), None);
    for fallback in [Fallback::LeastConnections, Fallback::RoundRobin, Fallback::RandomTwoChoices] {
        let policy = cookie_policy(fallback);
        for h in [headers(&[("x-user-id", "dave")]), HeaderMap::new()] {
            let mut d = decide(&policy, &set, &h);
            assert!(!d.is_panic());
            assert!(d.next_candidate(&set).is_none());
        }
    }
}

#[test]
fn long_keys_route_by_their_first_256_bytes_everywhere() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let long = "x".repeat(300);
    let mut d = decide(&key_policy(), &set, &headers(&[("x-user-id", &long)]));
    assert_eq!(d.key().map(str::len), Some(MAX_KEY_BYTES));
    assert_eq!(first(&mut d, &set), Some(primary(&set, &long)));
    assert_eq!(primary(&set, &long), primary(&set, &long[..MAX_KEY_BYTES]));
}

// ---------------------------------------------------------------------------------------------
// Bounded loads

/// `ceil(1.25 * (total + 1) / usable)` in exact integer arithmetic.
fn bound_125(total: u64, usable: u64) -> u64 {
    (5 * (total + 1)).div_ceil(4 * usable)
}

#[test]
fn without_bounded_loads_a_hot_key_stays_on_its_backend() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = key_policy();
    let h = headers(&[("x-user-id", "hot")]);
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut d = decide(&policy, &set, &h);
        held.push(d.next_candidate(&set).expect("usable"));
        assert_eq!(d.bounded_skips(), 0);
    }
    assert_eq!(set.members()[primary(&set, "hot")].live.load(), 300);
}

#[test]
fn bounded_loads_keep_every_backend_under_the_bound_one_reservation_at_a_time() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![user_header()], None, Fallback::LeastConnections, 1.25);
    let h = headers(&[("x-user-id", "hot")]);
    let hot = primary(&set, "hot");
    let mut held = Vec::new();
    let mut skips = 0u64;
    for total in 0..300u64 {
        let mut d = decide(&policy, &set, &h);
        let (i, guard) = d.next_candidate(&set).expect("usable");
        skips += u64::from(d.bounded_skips());
        assert!(u64::from(set.members()[i].live.load()) <= bound_125(total, 3));
        if i != hot {
            assert!(d.bounded_skips() >= 1, "left its primary without a skip");
        }
        held.push(guard);
    }
    let loads: Vec<u32> = set.members().iter().map(|m| m.live.load()).collect();
    assert_eq!(loads.iter().sum::<u32>(), 300);
    assert!(loads.iter().all(|&l| u64::from(l) <= bound_125(299, 3)), "{loads:?}");
    assert!(skips >= 300 - u64::from(loads[hot]), "skips {skips}, loads {loads:?}");
}

#[test]
fn bounded_loads_hold_under_300_concurrent_reservations_of_one_hot_key() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 75;
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![user_header()], None, Fallback::LeastConnections, 1.25);
    let hot = primary(&set, "hot");
    let start = Barrier::new(THREADS);
    let all_held = Barrier::new(THREADS + 1);
    let skips = std::sync::atomic::AtomicU64::new(0);
    let checked = Barrier::new(THREADS + 1);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (set, policy, start, all_held, checked, skips) = (&set, &policy, &start, &all_held, &checked, &skips);
            scope.spawn(move || {
                let h = headers(&[("x-user-id", "hot")]);
                let mut rng = StdRng::seed_from_u64(t as u64);
                let mut held = Vec::with_capacity(PER_THREAD);
                start.wait();
                for _ in 0..PER_THREAD {
                    let mut d = decide_at(policy, set, &h, now(), &mut rng);
                    held.push(d.next_candidate(set).expect("usable"));
                    skips.fetch_add(u64::from(d.bounded_skips()), std::sync::atomic::Ordering::Relaxed);
                }
                all_held.wait();
                checked.wait();
                drop(held);
            });
        }
        all_held.wait();
        // Loads only grew until now (nothing was released), so the final loads are the peaks.
        let loads: Vec<u32> = set.members().iter().map(|m| m.live.load()).collect();
        let skips = skips.load(std::sync::atomic::Ordering::Relaxed);
        checked.wait();
        assert_eq!(loads.iter().sum::<u32>(), 300);
        let bound = bound_125(299, 3);
        assert!(loads.iter().all(|&l| u64::from(l) <= bound), "loads {loads:?} bound {bound}");
        assert!(skips >= 300 - u64::from(loads[hot]), "skips {skips}, loads {loads:?}");
    });
    assert!(set.members().iter().all(|m| m.live.load() == 0));
}

#[test]
fn bounded_loads_take_the_least_loaded_when_every_candidate_is_over_a_stale_bound() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![user_header()], None, Fallback::LeastConnections, 1.25);
    let h = headers(&[("x-user-id", "hot")]);
    // Decide on an idle set (bound 1), then let other traffic arrive before connecting.
    let mut d = decide(&policy, &set, &h);
    let guards: Vec<LoadGuard> = [5, 3, 4]
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..*n).map(move |_| i))
        .map(|i| LoadGuard::acquire(&set.members()[i].live))
        .collect();
    let (i, _guard) = d.next_candidate(&set).expect("never fails for load");
    assert_eq!(i, 1, "least loaded");
    assert_eq!(d.bounded_skips(), 3);
    assert_eq!(set.members()[1].live.load(), 4);
    drop(guards);
}

// ---------------------------------------------------------------------------------------------
// Sticky cookie

#[test]
fn sticky_cookie_round_trip_pins_and_is_only_written_when_the_pin_changes() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = cookie_policy(Fallback::LeastConnections);
    let mut d = decide(&policy, &set, &HeaderMap::new());
    assert_eq!(d.reason(), Reason::Fallback);
    let served = first(&mut d, &set).expect("usable");
    let set_cookie = d.set_cookie(&policy, &set, served, now(), false).expect("new pin");
    let h = headers(&[("cookie", &format!("a=1; {}", as_request_cookie(&set_cookie)))]);
    for _ in 0..20 {
        let mut d = decide(&policy, &set, &h);
        assert_eq!(d.reason(), Reason::Cookie);
        assert_eq!(first(&mut d, &set), Some(served));
        assert_eq!(d.set_cookie(&policy, &set, served, now(), false), None);
        // Served elsewhere (fail-over): the pin changes, so the cookie is rewritten.
        let other = (served + 1) % 3;
        let rewritten = d.set_cookie(&policy, &set, other, now(), false).expect("re-pin");
        assert_ne!(rewritten, set_cookie);
    }
}

#[test]
fn a_pinned_request_fails_over_to_the_fallback_order_of_the_rest() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = cookie_policy(Fallback::LeastConnections);
    let tag_cookie = |i: usize| {
        let d = decide(&policy, &set, &HeaderMap::new());
        let v = d.set_cookie(&policy, &set, i, now(), false).expect("pin");
        headers(&[("cookie", &as_request_cookie(&v))])
    };
    let h = tag_cookie(2);
    let _busy = LoadGuard::acquire(&set.members()[0].live);
    let mut d = decide(&policy, &set, &h);
    assert_eq!(all_candidates(&mut d, &set), vec![2, 1, 0]);
}

#[test]
fn tampered_garbage_empty_and_huge_cookies_are_absent_and_rewritten() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = cookie_policy(Fallback::LeastConnections);
    let d = decide(&policy, &set, &HeaderMap::new());
    let pin = d.set_cookie(&policy, &set, 1, now(), false).expect("pin");
    let good = as_request_cookie(&pin);
    let value = &good[COOKIE_NAME.len() + 1..];
    let mut bad_values: Vec<String> = (0..value.len())
        .map(|i| {
            let mut b = value.as_bytes().to_vec();
            b[i] = if b[i] == b'x' { b'y' } else { b'x' };
            String::from_utf8(b).expect("ASCII")
        })
        .collect();
    bad_values.extend(["".into(), "garbage".into(), "\"\"".into(), "A".repeat(6000)]);
    for bad in bad_values {
        let h = headers(&[("cookie", &format!("{COOKIE_NAME}={bad}"))]);
        let mut d = decide(&policy, &set, &h);
        assert_eq!(d.reason(), Reason::Fallback, "{bad:.40}");
        let served = first(&mut d, &set).expect("usable");
        assert!(d.set_cookie(&policy, &set, served, now(), false).is_some());
    }
}

#[test]
fn a_valid_cookie_among_invalid_duplicates_still_pins() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = cookie_policy(Fallback::LeastConnections);
    let d = decide(&policy, &set, &HeaderMap::new());
    let good = as_request_cookie(&d.set_cookie(&policy, &set, 2, now(), false).expect("pin"));
    let h = headers(&[("cookie", &format!("{COOKIE_NAME}=junk")), ("cookie", &good)]);
    let mut d = decide(&policy, &set, &h);
    assert_eq!(d.reason(), Reason::Cookie);
    assert_eq!(first(&mut d, &set), Some(2));
}

#[test]
fn expired_cookies_are_absent_and_expiring_cookies_carry_max_age() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let mut config = cookie_config();
    config.ttl = Duration::from_secs(60);
    let policy = policy(vec![], Some(config), Fallback::LeastConnections, 0.0);
    let d = decide(&policy, &set, &HeaderMap::new());
    let pin = d.set_cookie(&policy, &set, 0, now(), false).expect("pin");
    assert!(pin.to_str().expect("ASCII").contains("; Max-Age=60"));
    let h = headers(&[("cookie", &as_request_cookie(&pin))]);
    let mut rng = StdRng::seed_from_u64(1);
    let d = decide_at(&policy, &set, &h, now() + Duration::from_secs(59), &mut rng);
    assert_eq!(d.reason(), Reason::Cookie);
    let d = decide_at(&policy, &set, &h, now() + Duration::from_secs(60), &mut rng);
    assert_eq!(d.reason(), Reason::Fallback);
}

#[test]
fn a_cookie_signed_with_another_key_is_absent() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = cookie_policy(Fallback::LeastConnections);
    let config = AffinityConfig {
        keys: vec![],
        hash: hash_config(DEFAULT_VNODES, 0.0),
        cookie: Some(cookie_config()),
        fallback: Fallback::LeastConnections,
    };
    let foreign_key = CookieKey::from_bytes(&[9; 32]).expect("32 bytes");
    let foreign_policy = AffinityPolicy::new(&config, foreign_key.clone()).expect("valid");
    let foreign_set = BackendSet::new(members(&["app-1", "app-2", "app-3"]), &config.hash, &foreign_key);
    let d = decide(&foreign_policy, &foreign_set, &HeaderMap::new());
    let foreign = d.set_cookie(&foreign_policy, &foreign_set, 0, now(), false).expect("pin");
    let d = decide(&policy, &set, &headers(&[("cookie", &as_request_cookie(&foreign))]));
    assert_eq!(d.reason(), Reason::Fallback);
}

#[test]
fn replicas_sharing_the_key_honour_each_others_cookies() {
    let policy = cookie_policy(Fallback::LeastConnections);
    let replica_a = set_of(&["app-1", "app-2", "app-3"]);
    let replica_b = set_of(&["app-3", "app-1", "app-2"]);
    let d = decide(&policy, &replica_a, &HeaderMap::new());
    let pin = d.set_cookie(&policy, &replica_a, 1, now(), false).expect("pin");
    let mut d = decide(&policy, &replica_b, &headers(&[("cookie", &as_request_cookie(&pin))]));
    assert_eq!(d.reason(), Reason::Cookie);
    let served = first(&mut d, &replica_b).expect("usable");
    assert_eq!(id(&replica_b, served), "app-2");
}

#[test]
fn a_cookie_for_a_removed_or_unusable_backend_is_repinned() {
    let policy = cookie_policy(Fallback::LeastConnections);
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let d = decide(&policy, &set, &HeaderMap::new());
    let pin = d.set_cookie(&policy, &set, 1, now(), false).expect("pin");
    let h = headers(&[("cookie", &as_request_cookie(&pin))]);

    let without = set_of(&["app-1", "app-3"]);
    let mut d = decide(&policy, &without, &h);
    assert_eq!(d.reason(), Reason::Repin);
    let served = first(&mut d, &without).expect("usable");
    assert!(d.set_cookie(&policy, &without, served, now(), false).is_some());

    for state in [Availability::Draining, Availability::Down, Availability::Ejected, Availability::Joining] {
        set.members()[1].live.set_availability(state);
        let mut d = decide(&policy, &set, &h);
        assert_eq!(d.reason(), Reason::Repin, "{state}");
        let got = all_candidates(&mut d, &set);
        assert!(!got.contains(&1), "{state}: {got:?}");
        assert!(d.set_cookie(&policy, &set, got[0], now(), false).is_some());
    }

    // In panic mode a draining pin is kept: it is as good as any other member.
    for m in set.members() {
        m.live.set_availability(Availability::Draining);
    }
    let mut d = decide(&policy, &set, &h);
    assert_eq!(d.reason(), Reason::Cookie);
    assert!(d.is_panic());
    assert_eq!(first(&mut d, &set), Some(1));
}

#[test]
fn the_cookie_value_reveals_neither_id_nor_length_of_it_and_is_short() {
    let ids = ["app-1", "a-backend-with-a-very-distinctive-and-long-name-0123456789"];
    let set = set_of(&ids);
    for ttl in [0, 3600] {
        let mut config = cookie_config();
        config.ttl = Duration::from_secs(ttl);
        let policy = policy(vec![], Some(config), Fallback::LeastConnections, 0.0);
        let d = decide(&policy, &set, &HeaderMap::new());
        let mut lengths = BTreeSet::new();
        for (i, backend) in ids.iter().enumerate() {
            let pin = as_request_cookie(&d.set_cookie(&policy, &set, i, now(), true).expect("pin"));
            let value = &pin[COOKIE_NAME.len() + 1..];
            assert!(value.len() < 100, "{value}");
            lengths.insert(value.len());
            let raw = URL_SAFE_NO_PAD.decode(value).expect("base64url");
            assert!(!value.contains(backend));
            assert!(!raw.windows(backend.len()).any(|w| w == backend.as_bytes()));
        }
        assert_eq!(lengths.len(), 1, "value length must not depend on the id");
    }
}

#[test]
fn set_cookie_attributes_follow_the_config() {
    let set = set_of(&["app-1"]);
    let render = |config: CookieConfig, is_tls: bool| -> String {
        let policy = policy(vec![], Some(config), Fallback::LeastConnections, 0.0);
        let d = decide(&policy, &set, &HeaderMap::new());
        let v = d.set_cookie(&policy, &set, 0, now(), is_tls).expect("pin");
        let text = v.to_str().expect("ASCII").to_owned();
        let (pair, attributes) = text.split_once(';').expect("attributes");
        assert!(pair.starts_with(&format!("{}=", policy.cookie_name().expect("configured"))));
        attributes.to_owned()
    };
    // Attribute order is the `cookie` crate's; RFC 6265 gives it no meaning.
    assert_eq!(render(cookie_config(), false), " HttpOnly; SameSite=Lax; Path=/");
    assert_eq!(render(cookie_config(), true), " HttpOnly; SameSite=Lax; Secure; Path=/");
    let custom = CookieConfig {
        name: "pin".into(),
        ttl: Duration::from_millis(3_600_500),
        secure: SecureMode::Always,
        http_only: false,
        same_site: SameSite::Strict,
        path: "/app".into(),
        domain: Some("example.com".into()),
        key_env: None,
    };
    assert_eq!(render(custom.clone(), false), " SameSite=Strict; Secure; Path=/app; Domain=example.com; Max-Age=3601");
    let never = CookieConfig { secure: SecureMode::Never, same_site: SameSite::None, ..custom };
    assert_eq!(render(never, true), " SameSite=None; Path=/app; Domain=example.com; Max-Age=3601");
}

#[test]
fn cookie_names_and_attributes_that_cannot_be_rendered_are_refused() {
    let build = |config: CookieConfig| {
        let affinity = AffinityConfig {
            keys: vec![],
            hash: hash_config(DEFAULT_VNODES, 0.0),
            cookie: Some(config),
            fallback: Fallback::LeastConnections,
        };
        AffinityPolicy::new(&affinity, cookie_key()).err()
    };
    for name in ["", "a;b", "a b", "a=b", "é"] {
        let config = CookieConfig { name: name.into(), ..cookie_config() };
        assert_eq!(build(config), Some(PolicyError::CookieName(name.into())));
    }
    let config = CookieConfig { path: "/a;b".into(), ..cookie_config() };
    assert!(matches!(build(config), Some(PolicyError::CookieAttribute { attribute: "path", .. })));
    let config = CookieConfig { domain: Some("x\u{7f}".into()), ..cookie_config() };
    assert!(matches!(build(config), Some(PolicyError::CookieAttribute { attribute: "domain", .. })));
}

#[test]
fn keys_take_precedence_over_cookies_and_need_no_cookie() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = key_policy();
    let d = decide(&policy, &set, &HeaderMap::new());
    let other = (primary(&set, "erin") + 1) % 3;
    let pin = d.set_cookie(&policy, &set, other, now(), false).expect("pin");
    let h = headers(&[("x-user-id", "erin"), ("cookie", &as_request_cookie(&pin))]);
    let mut d = decide(&policy, &set, &h);
    assert_eq!(d.reason(), Reason::Key);
    let served = first(&mut d, &set).expect("usable");
    assert_eq!(served, primary(&set, "erin"));
    assert_eq!(d.set_cookie(&policy, &set, served, now(), false), None);
}

#[test]
fn without_a_cookie_config_no_cookie_is_read_or_written() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let with = cookie_policy(Fallback::LeastConnections);
    let d = decide(&with, &set, &HeaderMap::new());
    let pin = d.set_cookie(&with, &set, 1, now(), false).expect("pin");
    let h = headers(&[("cookie", &as_request_cookie(&pin))]);
    let without = policy(vec![user_header()], None, Fallback::LeastConnections, 0.0);
    let mut d = decide(&without, &set, &h);
    assert_eq!(d.reason(), Reason::Fallback);
    let served = first(&mut d, &set).expect("usable");
    assert_eq!(d.set_cookie(&without, &set, served, now(), false), None);
    let mut stripped = h.clone();
    without.strip_cookie(&mut stripped);
    assert_eq!(stripped, h);
}

#[test]
fn strip_sticky_cookie_removes_only_ours() {
    let policy = cookie_policy(Fallback::LeastConnections);
    let mut h = headers(&[
        ("cookie", "a=1; TETHER_AFFINITY=abc; TETHER_AFFINITY2=keep;b=2"),
        ("cookie", "TETHER_AFFINITY=only"),
        ("cookie", "c=3;  d=\"4\""),
        ("x-other", "x"),
    ]);
    policy.strip_cookie(&mut h);
    let cookies: Vec<&str> = h.get_all(COOKIE).iter().map(|v| v.to_str().expect("ASCII")).collect();
    assert_eq!(cookies, vec!["a=1; TETHER_AFFINITY2=keep; b=2", "c=3;  d=\"4\""]);
    assert_eq!(h.get("x-other").map(|v| v.as_bytes()), Some(&b"x"[..]));

    let mut only = headers(&[("cookie", " TETHER_AFFINITY=abc ")]);
    policy.strip_cookie(&mut only);
    assert!(only.get(COOKIE).is_none());

    let untouched = headers(&[("cookie", "x=1;y=2"), ("cookie", "z")]);
    let mut copy = untouched.clone();
    policy.strip_cookie(&mut copy);
    assert_eq!(copy, untouched);
}

// ---------------------------------------------------------------------------------------------
// Keys through route

#[test]
fn every_key_source_routes_to_the_keys_ring_position() {
    let set = set_of(&["app-1", "app-2", "app-3", "app-4"]);
    let keys = vec![
        user_header(),
        KeySource::Cookie("user_id".into()),
        KeySource::Query("user_id".into()),
        KeySource::JwtClaim { from: TokenSource::Header(AUTHORIZATION), claim: "sub".into() },
    ];
    let policy = policy(keys, Some(cookie_config()), Fallback::LeastConnections, 0.0);
    let token = format!("Bearer e30.{}.sig", URL_SAFE_NO_PAD.encode(br#"{"sub":"frank"}"#));
    let cases: [(HeaderMap, Option<&str>); 4] = [
        (headers(&[("x-user-id", "frank")]), None),
        (headers(&[("cookie", "user_id=frank")]), None),
        (HeaderMap::new(), Some("user_id=frank")),
        (headers(&[("authorization", &token)]), None),
    ];
    for (h, query) in &cases {
        let facts = RequestFacts { headers: h, query: *query, path: "/", verified: None };
        let mut d = route(&facts, &policy, &set, now(), &mut StdRng::seed_from_u64(1));
        assert_eq!(d.reason(), Reason::Key);
        assert_eq!(d.key(), Some("frank"));
        assert_eq!(d.shared_key().as_deref(), Some("frank"));
        assert_eq!(first(&mut d, &set), Some(primary(&set, "frank")));
    }
    let malformed = headers(&[("authorization", "Bearer not.a-jwt")]);
    let d = decide(&policy, &set, &malformed);
    assert_eq!(d.reason(), Reason::Fallback);
    assert_eq!(d.key(), None);
}

// ---------------------------------------------------------------------------------------------
// Fallbacks

#[test]
fn least_connections_breaks_ties_randomly_so_sequential_requests_spread() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![], None, Fallback::LeastConnections, 0.0);
    let mut rng = StdRng::seed_from_u64(11);
    let mut counts = [0usize; 3];
    for _ in 0..300 {
        let mut d = decide_at(&policy, &set, &HeaderMap::new(), now(), &mut rng);
        counts[first(&mut d, &set).expect("usable")] += 1;
    }
    assert!(counts.iter().all(|&c| (70..=130).contains(&c)), "{counts:?}");
}

#[test]
fn least_connections_orders_by_load() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![], None, Fallback::LeastConnections, 0.0);
    let _busy: Vec<LoadGuard> = [0, 0, 1].iter().map(|&i| LoadGuard::acquire(&set.members()[i].live)).collect();
    for seed in 0..20 {
        let mut d = decide_at(&policy, &set, &HeaderMap::new(), now(), &mut StdRng::seed_from_u64(seed));
        assert_eq!(all_candidates(&mut d, &set), vec![2, 1, 0]);
    }
}

#[test]
fn round_robin_cycles_and_skips_unusable_members() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![], None, Fallback::RoundRobin, 0.0);
    let picks: Vec<usize> =
        (0..6).map(|_| first(&mut decide(&policy, &set, &HeaderMap::new()), &set).expect("usable")).collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    set.members()[1].live.set_availability(Availability::Down);
    let picks: Vec<usize> =
        (0..6).map(|_| first(&mut decide(&policy, &set, &HeaderMap::new()), &set).expect("usable")).collect();
    assert_eq!(picks, vec![0, 2, 2, 0, 2, 2]);
    let mut d = decide(&policy, &set, &HeaderMap::new());
    assert_eq!(all_candidates(&mut d, &set), vec![0, 2]);
}

#[test]
fn random_two_choices_picks_the_less_loaded_of_two() {
    let set = set_of(&["app-1", "app-2", "app-3"]);
    let policy = policy(vec![], None, Fallback::RandomTwoChoices, 0.0);
    let _busy: Vec<LoadGuard> =
        (0..50).map(|_| 1).chain((0..100).map(|_| 2)).map(|i| LoadGuard::acquire(&set.members()[i].live)).collect();
    let mut rng = StdRng::seed_from_u64(5);
    let mut firsts = [0usize; 3];
    for _ in 0..300 {
        let mut d = decide_at(&policy, &set, &HeaderMap::new(), now(), &mut rng);
        let order = all_candidates(&mut d, &set);
        assert_eq!(order.len(), 3);
        let (a, b) = (order[0], order[1]);
        assert!(set.members()[a].live.load() < set.members()[b].live.load(), "{order:?}");
        firsts[a] += 1;
    }
    // The most loaded is never preferred; the middle one wins exactly when paired with it.
    assert_eq!(firsts[2], 0);
    assert!(firsts[0] > 150 && firsts[1] > 50, "{firsts:?}");
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input never panics

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![Just(b';'), Just(b'='), Just(b'.'), Just(b' '), Just(b'"'), 0x21u8..0x7f, 0x80u8..=0xff,],
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x7e7e_0003),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_headers_queries_and_cookies_never_panic(
        user in header_bytes(),
        cookie in header_bytes(),
        auth in header_bytes(),
        payload in proptest::collection::vec(any::<u8>(), 0..80),
        query in ".{0,120}",
        with_name in any::<bool>(),
        fallback in prop_oneof![Just(Fallback::LeastConnections), Just(Fallback::RoundRobin), Just(Fallback::RandomTwoChoices)],
    ) {
        let set = set_of(&["app-1", "app-2", "app-3"]);
        let keys = vec![
            user_header(),
            KeySource::Cookie("user_id".into()),
            KeySource::Query("user_id".into()),
            KeySource::JwtClaim { from: TokenSource::Header(AUTHORIZATION), claim: "sub".into() },
            KeySource::JwtClaim { from: TokenSource::Cookie("jwt".into()), claim: "sub".into() },
        ];
        let policy = policy(keys, Some(cookie_config()), fallback, 1.25);
        let mut h = HeaderMap::new();
        let mut cookie = cookie;
        if with_name {
            cookie.splice(0..0, format!("{COOKIE_NAME}=").bytes());
        }
        let jwt = format!("Bearer x.{}.y", URL_SAFE_NO_PAD.encode(&payload));
        for (name, bytes) in [("x-user-id", user), ("cookie", cookie), ("authorization", auth), ("authorization", jwt.into_bytes())] {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.append(HeaderName::from_static(name), v);
            }
        }
        let facts = RequestFacts { headers: &h, query: Some(&query), path: "/", verified: None };
        let mut d = route(&facts, &policy, &set, now(), &mut StdRng::seed_from_u64(0));
        prop_assert!(d.key().is_none_or(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES));
        let got = all_candidates(&mut d, &set);
        prop_assert_eq!(got.iter().copied().collect::<BTreeSet<_>>().len(), 3);
        let _ = d.set_cookie(&policy, &set, got[0], now(), true);
        policy.strip_cookie(&mut h);
        for value in h.get_all(COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                let name = pair.split(|&b| b == b'=').next().unwrap_or_default().trim_ascii();
                prop_assert!(name != COOKIE_NAME.as_bytes() || !pair.contains(&b'='));
            }
        }
    }
}

#[test]
fn an_issued_cookie_is_the_value_a_fresh_signature_gives_for_its_backend_scheme_and_expiry() {
    let set = set_of(&["app-1", "app-2"]);
    let fresh = |config: CookieConfig, served: usize, at: SystemTime, is_tls: bool| {
        let policy = policy(vec![], Some(config), Fallback::LeastConnections, 0.0);
        let d = decide(&policy, &set, &HeaderMap::new());
        d.set_cookie(&policy, &set, served, at, is_tls).expect("pin")
    };
    for ttl in [Duration::ZERO, Duration::from_secs(60)] {
        let config = CookieConfig { ttl, ..cookie_config() };
        // One policy issues every value below, in an order that reuses and replaces entries.
        let shared = policy(vec![], Some(config.clone()), Fallback::LeastConnections, 0.0);
        let d = decide(&shared, &set, &HeaderMap::new());
        let later = now() + Duration::from_secs(1);
        for (served, at, is_tls) in [
            (0, now(), false),
            (0, now(), false),
            (1, now(), false),
            (0, now(), true),
            (0, later, false),
            (0, now(), false),
            (1, later, true),
        ] {
            let issued = d.set_cookie(&shared, &set, served, at, is_tls).expect("pin");
            assert_eq!(
                issued,
                fresh(config.clone(), served, at, is_tls),
                "ttl {ttl:?}, backend {served}, tls {is_tls}"
            );
        }
        let a = d.set_cookie(&shared, &set, 0, now(), false).expect("pin");
        let b = d.set_cookie(&shared, &set, 1, now(), false).expect("pin");
        assert_ne!(a, b, "each backend has its own value");
        let moved = d.set_cookie(&shared, &set, 0, later, false).expect("pin");
        assert_eq!(moved == a, ttl.is_zero(), "an expiring cookie is signed again when its expiry second moves");
    }
}
