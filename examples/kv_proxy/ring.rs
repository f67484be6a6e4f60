//! The ring: which backend owns a key.

use std::net::SocketAddr;

use crate::POINTS_PER_BACKEND;

/// FNV-1a, 64-bit, then a finaliser (splitmix64's) so that similar short
/// strings ("ADDR-1", "ADDR-2") land far apart.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A consistent-hash ring over backend indices.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    /// (point, backend index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub(crate) fn new(backends: &[SocketAddr]) -> Ring {
        let mut points = Vec::with_capacity(backends.len() * POINTS_PER_BACKEND);
        for (i, b) in backends.iter().enumerate() {
            for j in 0..POINTS_PER_BACKEND {
                points.push((hash(format!("{b}-{j}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub(crate) fn pick(&self, key: &[u8]) -> usize {
        let h = hash(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        self.points.get(i).unwrap_or(&self.points[0]).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| ([127, 0, 0, 1], 11211 + i).into()).collect()
    }

    #[test]
    fn keys_spread_over_all_backends() {
        let ring = Ring::new(&addrs(3));
        let mut counts = [0usize; 3];
        for k in 0..30_000 {
            counts[ring.pick(format!("key:{k}").as_bytes())] += 1;
        }
        // Each backend should own roughly a third; allow a wide margin.
        for c in counts {
            assert!((6_000..14_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn adding_a_backend_moves_few_keys() {
        let three = Ring::new(&addrs(3));
        let four = Ring::new(&addrs(4));
        let moved = (0..20_000)
            .filter(|k| {
                let key = format!("key:{k}");
                let (a, b) = (three.pick(key.as_bytes()), four.pick(key.as_bytes()));
                if a != b {
                    // A key only ever moves to the new backend.
                    assert_eq!(b, 3);
                }
                a != b
            })
            .count();
        // About a quarter should move; modulo hashing would move 3/4.
        assert!((2_500..7_500).contains(&moved), "moved {moved}");
    }
}
