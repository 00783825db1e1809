//! The consistent-hash ring: where virtual nodes sit and in which order a key visits members.
//!
//! Owns the ring hash (a fixed, specified algorithm), the placement of virtual nodes and the
//! ring order of a key. Must not: look at availability or load (that is the decision's job),
//! or know any address: ring identity is the backend id alone, so readdressing a backend moves
//! no key, by construction.
//!
//! # The algorithm (it is a contract: changing it moves users)
//! `H(bytes) = SipHash-1-3` with the fixed keys [`RING_KEY0`], [`RING_KEY1`]. A string `s` is
//! hashed as its UTF-8 bytes followed by `0xFF`; a `u64` as its 8 little-endian bytes (both
//! are exactly what `Hash` feeds a hasher for `str` and `u64` today, so the ring is the one the
//! `consistent_hash_ring` crate builds with `RingBuilder::new(RingHasher)`; a test holds the
//! two equal, and a golden table holds the mapping itself).
//! - Member with id `id` and `v = vnodes * weight` virtual nodes: points `p0 = H(id)`,
//!   `p(i+1) = H(p(i))`, for `i < v`.
//! - A key's primary: the owner of the first point `>= H(key)`, wrapping to the lowest point.
//! - A key's ring order (the crate's `replicas()` order): `h0 = H(key)`, `h(j+1) = H(h(j))`;
//!   candidate `j` is found by locating `h(j)` as above and scanning forward (wrapping) to the
//!   first point whose owner is not yet in the order. The order is stable, distinct, contains
//!   every member, and its first element is the primary.
//!
//! # Why not call the crate at run time
//! The crate inserts every virtual node into a sorted `Vec` one by one: building 100 members x
//! 1000 vnodes costs 2.2 s in release (quadratic), and `replicas()` allocates its `seen` set
//! on every call and borrows the ring, so a decision could not own it. We build the identical
//! table in O(k log k) (sort once) and walk it with a resumable, allocation-free cursor
//! ([`RingWalk`]). Two points with the same 64-bit hash (never observed; ~k^2/2^65) go to the
//! member with the smaller id, so the table never depends on insertion order.

use std::hash::{BuildHasher, Hasher};

use siphasher::sip::SipHasher13;

use super::bits::Bits;

/// SipHash key 0 of the ring hash ("tether-r" as big-endian ASCII). Never change it.
pub(crate) const RING_KEY0: u64 = 0x7465_7468_6572_2d72;
/// SipHash key 1 of the ring hash ("ing-v1\0\0" as big-endian ASCII). Never change it.
pub(crate) const RING_KEY1: u64 = 0x696e_672d_7631_0000;

/// Upper bound on virtual nodes per member, so a mistaken `weight`/`vnodes` in a config cannot
/// exhaust memory (12 bytes per point). Config validation should reject such values first.
pub(crate) const MAX_VNODES_PER_MEMBER: u64 = 1 << 20;

/// The ring's `BuildHasher`: SipHash-1-3 with the fixed keys above.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RingHasher;

impl BuildHasher for RingHasher {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(RING_KEY0, RING_KEY1)
    }
}

/// `H(s)`: the ring hash of a string (keys and member ids).
pub(crate) fn hash_str(s: &str) -> u64 {
    let mut h = RingHasher.build_hasher();
    h.write(s.as_bytes());
    h.write_u8(0xff);
    h.finish()
}

/// `H(n)`: the ring hash of a previous hash (virtual node chains and the ring-order chain).
pub(crate) fn hash_u64(n: u64) -> u64 {
    let mut h = RingHasher.build_hasher();
    h.write(&n.to_le_bytes());
    h.finish()
}

/// Virtual node count for a member: `vnodes * weight`, each at least 1, capped.
pub(crate) fn vnode_count(vnodes: u32, weight: u32) -> u64 {
    (u64::from(vnodes.max(1)) * u64::from(weight.max(1))).min(MAX_VNODES_PER_MEMBER)
}

/// The sorted points of the ring and the member index owning each.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u32]>,
    members: usize,
}

impl Ring {
    /// Build from `(id, virtual node count)` per member, in member index order.
    pub(crate) fn build(members: &[(&str, u64)]) -> Self {
        let total: u64 = members.iter().map(|(_, v)| *v).sum();
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for (index, (id, vnodes)) in members.iter().enumerate() {
            // Member counts come from a config file; u32 holds any realistic one, and a member
            // beyond it simply gets no points (it stays reachable through the ring order's
            // completion rule and the fallbacks).
            let Ok(owner) = u32::try_from(index) else {
                break;
            };
            let mut point = hash_str(id);
            for _ in 0..*vnodes {
                entries.push((point, owner));
                point = hash_u64(point);
            }
        }
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| members[a.1 as usize].0.cmp(members[b.1 as usize].0)).then_with(|| a.1.cmp(&b.1))
        });
        entries.dedup_by_key(|e| e.0);
        let (points, owners): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        Self { points: points.into_boxed_slice(), owners: owners.into_boxed_slice(), members: members.len() }
    }

    /// Number of points (virtual nodes) on the ring.
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// Index of the first point `>= hash`, wrapping to 0. `None` on an empty ring.
    fn position(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|&p| p < hash);
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// The member owning `hash` (the key's primary).
    #[cfg(test)]
    pub(crate) fn owner_of(&self, hash: u64) -> Option<usize> {
        self.position(hash).map(|i| self.owners[i] as usize)
    }
}

/// A resumable cursor over a key's ring order: allocation-free for sets of up to 128 members,
/// cheap to keep inside a decision, and advanced only as far as candidates are needed.
#[derive(Debug, Clone)]
pub(crate) struct RingWalk {
    hash: u64,
    emitted: usize,
    seen: Bits,
}

impl RingWalk {
    pub(crate) fn new(key_hash: u64) -> Self {
        Self { hash: key_hash, emitted: 0, seen: Bits::default() }
    }

    /// The next member in the key's ring order, or `None` once every member was emitted.
    pub(crate) fn next(&mut self, ring: &Ring) -> Option<usize> {
        if self.emitted >= ring.members {
            return None;
        }
        if self.emitted > 0 {
            self.hash = hash_u64(self.hash);
        }
        if let Some(mut pos) = ring.position(self.hash) {
            // Bounded by one lap: every member with a point is found within it.
            for _ in 0..ring.points.len() {
                let owner = ring.owners[pos] as usize;
                if self.seen.insert(owner) {
                    self.emitted += 1;
                    return Some(owner);
                }
                pos += 1;
                if pos == ring.points.len() {
                    pos = 0;
                }
            }
        }
        // Only members without a point are left (all their points lost to 64-bit collisions,
        // or an index beyond u32): keep the order complete, lowest index first.
        let owner = (0..ring.members).find(|&i| !self.seen.contains(i))?;
        self.seen.insert(owner);
        self.emitted += 1;
        Some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consistent_hash_ring::RingBuilder;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngSeed};

    fn order(ring: &Ring, key: &str) -> Vec<usize> {
        let mut walk = RingWalk::new(hash_str(key));
        std::iter::from_fn(|| walk.next(ring)).collect()
    }

    #[test]
    fn ring_hash_matches_its_specification() {
        // The spec in the module doc, computed independently of `hash_str`/`hash_u64`.
        let mut bytes = b"app-1".to_vec();
        bytes.push(0xff);
        let mut h = SipHasher13::new_with_keys(RING_KEY0, RING_KEY1);
        h.write(&bytes);
        assert_eq!(hash_str("app-1"), h.finish());
        let mut h = SipHasher13::new_with_keys(RING_KEY0, RING_KEY1);
        h.write(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(hash_u64(1), h.finish());
        // Golden values: the ring hash itself must never change.
        assert_eq!(hash_str("app-1"), 0x1aae_937b_5e6f_3753);
        assert_eq!(hash_str(""), 0x6533_87ae_d37c_ef6f);
        assert_eq!(hash_u64(0), 0xd0c3_8d59_07bf_aad3);
    }

    #[test]
    fn empty_ring_has_no_owner_and_no_order() {
        let ring = Ring::build(&[]);
        assert_eq!(ring.owner_of(42), None);
        assert!(order(&ring, "alice").is_empty());
    }

    #[test]
    fn single_member_owns_everything() {
        let ring = Ring::build(&[("only", 3)]);
        assert_eq!(ring.len(), 3);
        for key in ["a", "b", "", "zzz"] {
            assert_eq!(ring.owner_of(hash_str(key)), Some(0));
            assert_eq!(order(&ring, key), vec![0]);
        }
    }

    #[test]
    fn default_vnodes_ring_equals_the_crate_for_app_names() {
        let ids = ["app-1", "app-2", "app-3"];
        let ring = Ring::build(&ids.map(|id| (id, 1000)));
        let reference = RingBuilder::new(RingHasher).vnodes(1000).nodes_iter(ids.iter().map(|s| s.to_string())).build();
        for i in 0..2000 {
            let key = format!("user-{i}");
            let ours: Vec<&str> = order(&ring, &key).into_iter().map(|m| ids[m]).collect();
            let theirs: Vec<&str> = reference.replicas(&*key).map(String::as_str).collect();
            assert_eq!(ours, theirs, "key {key}");
            assert_eq!(ours[0], reference.get(&*key).as_str());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            rng_seed: RngSeed::Fixed(0x7e7e_0001),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Our table and walk are the crate's ring and `replicas()`, for any names, weights
        /// and vnode counts (small vnode counts keep the crate's quadratic build cheap).
        #[test]
        fn ring_and_order_equal_the_crate(
            members in proptest::collection::btree_map("[a-z0-9-]{1,12}", 1u32..4, 1..9),
            vnodes in 1u32..60,
            keys in proptest::collection::vec(".{0,20}", 50),
        ) {
            let ids: Vec<&str> = members.keys().map(String::as_str).collect();
            let spec: Vec<(&str, u64)> =
                members.iter().map(|(id, w)| (id.as_str(), vnode_count(vnodes, *w))).collect();
            let ring = Ring::build(&spec);
            let mut builder = RingBuilder::new(RingHasher);
            for (id, w) in &members {
                builder = builder.weighted_node(id.clone(), (vnodes * w) as usize);
            }
            let reference = builder.build();
            prop_assert_eq!(ring.len(), reference.vnodes());
            for key in &keys {
                let ours: Vec<&str> = order(&ring, key).into_iter().map(|m| ids[m]).collect();
                let theirs: Vec<&str> = reference.replicas(key.as_str()).map(String::as_str).collect();
                prop_assert_eq!(&ours, &theirs);
                prop_assert_eq!(ours.len(), ids.len());
            }
        }
    }
}
