//! Consistent hashing (Envoy's RING_HASH): each endpoint owns points on a ring of 64-bit
//! hashes; a request goes to the owner of the first point at or after its own hash, so the
//! same key keeps reaching the same endpoint, and an endpoint's arrival or departure moves
//! only its share of keys. Points are FNV-1a hashes of `ADDRESS_INDEX` (the exact mapping
//! differs from Envoy's xxHash ring; the stickiness is the contract).

use std::net::SocketAddr;

/// FNV-1a, 64 bits, then a finalizer (splitmix64's): stable across runs and machines, and
/// keys that differ in one byte (`u0`, `u1`) land far apart on the ring, which FNV alone
/// does not do for short keys.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The ring for `endpoints`, about `size` points in all (at least one per endpoint).
pub fn build(endpoints: &[SocketAddr], size: usize) -> Vec<(u64, SocketAddr)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let per = (size / endpoints.len()).max(1);
    let mut ring: Vec<(u64, SocketAddr)> = endpoints
        .iter()
        .flat_map(|a| (0..per).map(move |i| (fnv1a(format!("{a}_{i}").as_bytes()), *a)))
        .collect();
    ring.sort_unstable();
    ring
}

/// The endpoint owning `hash`.
pub fn lookup(ring: &[(u64, SocketAddr)], hash: u64) -> Option<SocketAddr> {
    if ring.is_empty() {
        return None;
    }
    let i = ring.partition_point(|(h, _)| *h < hash);
    Some(ring[if i == ring.len() { 0 } else { i }].1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn keys_stick_spread_and_move_little() {
        let three = build(&addrs(3), 1024);
        let keys: Vec<u64> = (0..3000)
            .map(|k| fnv1a(format!("user-{k}").as_bytes()))
            .collect();
        let owner: Vec<SocketAddr> = keys.iter().map(|k| lookup(&three, *k).unwrap()).collect();
        // Same key, same endpoint.
        assert_eq!(lookup(&three, keys[7]), Some(owner[7]));
        // Spread: every endpoint owns a fair share (within 15 points of a third).
        for a in addrs(3) {
            let n = owner.iter().filter(|o| **o == a).count();
            assert!((550..=1450).contains(&n), "{a} owns {n} of 3000");
        }
        // A fourth endpoint moves about its quarter of the keys, far from all of them
        // (each endpoint's share of points shrinks, so a few move between the others too).
        let four = build(&addrs(4), 1024);
        let moved = keys
            .iter()
            .zip(&owner)
            .filter(|(k, o)| lookup(&four, **k) != Some(**o))
            .count();
        assert!(moved < 1350, "{moved} of 3000 moved");
        // Short keys that differ in one byte spread too.
        let short: std::collections::BTreeSet<SocketAddr> = (0..16)
            .map(|i| lookup(&three, fnv1a(format!("u{i}").as_bytes())).unwrap())
            .collect();
        assert_eq!(short.len(), 3);
        assert_eq!(lookup(&[], 1), None);
    }
}
