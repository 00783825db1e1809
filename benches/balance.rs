//! Cost of one routing decision (`route` + the first `next_candidate`, guard released) over
//! 100 backends at the default 1000 vnodes, for each way a request can be routed, and the cost
//! of rebuilding the set. Run: `cargo bench --bench balance`.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng};
use tether::balance::{AffinityPolicy, Availability, BackendSet, CookieKey, Member, RequestFacts, route};
use tether::config::{AffinityConfig, CookieConfig, Fallback, HashConfig, KeySource, SameSite, SecureMode};

const BACKENDS: usize = 100;
const VNODES: u32 = 1000;
/// Distinct requests cycled through, so lookups do not all hit the same cache lines.
const REQUESTS: usize = 1024;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn key() -> CookieKey {
    CookieKey::from_bytes(&[42; 32]).expect("32 bytes")
}

fn hash(balance_factor: f64) -> HashConfig {
    HashConfig { vnodes: VNODES, balance_factor }
}

fn members() -> Vec<Member> {
    (0..BACKENDS).map(|i| Member::new(format!("backend-{i}"), 1, Availability::Active)).collect()
}

fn policy(with_key: bool, with_cookie: bool, balance_factor: f64) -> AffinityPolicy {
    let config = AffinityConfig {
        keys: if with_key { vec![KeySource::Header(HeaderName::from_static("x-user-id"))] } else { vec![] },
        hash: hash(balance_factor),
        cookie: with_cookie.then(|| CookieConfig {
            name: "TETHER_AFFINITY".into(),
            ttl: Duration::ZERO,
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            key_env: None,
        }),
        fallback: Fallback::LeastConnections,
    };
    AffinityPolicy::new(&config, key()).expect("valid policy")
}

fn key_requests() -> Vec<HeaderMap> {
    let mut rng = SmallRng::seed_from_u64(1);
    (0..REQUESTS)
        .map(|_| {
            let mut h = HeaderMap::new();
            let value = format!("user-{}", rng.next_u64() % 10_000_000);
            h.insert("x-user-id", HeaderValue::from_str(&value).expect("ASCII"));
            h.insert("accept", HeaderValue::from_static("*/*"));
            h
        })
        .collect()
}

fn cookie_requests(policy: &AffinityPolicy, set: &BackendSet) -> Vec<HeaderMap> {
    let mut rng = SmallRng::seed_from_u64(2);
    (0..REQUESTS)
        .map(|i| {
            let d = route(
                &RequestFacts { headers: &HeaderMap::new(), query: None, path: "/", verified: None },
                policy,
                set,
                now(),
                &mut rng,
            );
            let pin = d.set_cookie(policy, set, i % BACKENDS, now(), false).expect("cookie configured");
            let pair = pin.to_str().expect("ASCII").split(';').next().expect("pair").to_owned();
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&format!("theme=dark; {pair}")).expect("ASCII"));
            h
        })
        .collect()
}

fn bench_decision(c: &mut Criterion, name: &str, policy: &AffinityPolicy, requests: &[HeaderMap]) {
    let set = BackendSet::new(members(), &hash(0.0), policy.cookie_key());
    let mut rng = SmallRng::seed_from_u64(3);
    let mut i = 0usize;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let facts = RequestFacts { headers: &requests[i], query: None, path: "/", verified: None };
            let mut decision = route(&facts, policy, &set, now(), &mut rng);
            black_box(decision.next_candidate(&set).map(|(index, _guard)| index))
        })
    });
}

fn decisions(c: &mut Criterion) {
    let keyed = policy(true, true, 0.0);
    bench_decision(c, "route/header_key/100_backends", &keyed, &key_requests());

    let bounded = policy(true, false, 1.25);
    bench_decision(c, "route/header_key_bounded_loads/100_backends", &bounded, &key_requests());

    let set = BackendSet::new(members(), &hash(0.0), &key());
    let cookies = cookie_requests(&keyed, &set);
    bench_decision(c, "route/cookie/100_backends", &keyed, &cookies);

    let fallback = policy(false, false, 0.0);
    let plain: Vec<HeaderMap> = (0..REQUESTS).map(|_| HeaderMap::new()).collect();
    bench_decision(c, "route/least_connections/100_backends", &fallback, &plain);
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("backend_set");
    group.sample_size(10);
    group.bench_function("new/100_backends_x_1000_vnodes", |b| {
        b.iter(|| black_box(BackendSet::new(members(), &hash(0.0), &key())))
    });
    group.finish();
}

criterion_group!(benches, decisions, rebuild);
criterion_main!(benches);
