//! The data a transfer test sends and how what arrived is judged.
//!
//! The pattern is a hash of the word index and a per-pair seed: never zeros, never a constant,
//! never what another pair sent, so a stale buffer, a zero page, or a shifted or misrouted
//! write all show up as a mismatch. The destination is filled with [`FILL`] before each
//! transfer, so "nothing arrived" is told apart from "zeros arrived".

use crate::facts::{Damage, Mismatch};

/// What the destination holds before a transfer (as 32-bit words).
pub const FILL: u32 = 0xA5C3_5A3C;

/// splitmix64: cheap, and every output bit depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `bytes` (a multiple of 8) of the pattern for `seed`.
pub fn pattern(seed: u64, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes);
    for i in 0..(bytes / 8) as u64 {
        out.extend_from_slice(&mix(seed.wrapping_mul(0x1_0000_0001) ^ i).to_le_bytes());
    }
    out
}

/// The seed of the transfer from `from` to `to`.
pub fn seed(from: i32, to: i32) -> u64 {
    ((from as u64) << 32) | (to as u32 as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// None when `got` equals `expected` byte for byte; otherwise where and how it differs.
pub fn compare(expected: &[u8], got: &[u8]) -> Option<Mismatch> {
    if expected == got {
        return None;
    }
    // Whole-slice equality is a memcmp; find the bad region chunk by chunk, then the byte.
    const CHUNK: usize = 4096;
    let fill = FILL.to_ne_bytes();
    let mut first = None;
    let mut bad = 0u64;
    let mut zeros = true;
    let mut unchanged = true;
    for (c, (e, g)) in expected.chunks(CHUNK).zip(got.chunks(CHUNK)).enumerate() {
        if e == g {
            continue;
        }
        for (i, (x, y)) in e.iter().zip(g).enumerate() {
            if x != y {
                let off = c * CHUNK + i;
                first.get_or_insert(off);
                bad += 1;
                zeros &= *y == 0;
                unchanged &= *y == fill[off % 4];
            }
        }
    }
    // Lengths differ only through a caller bug; count the missing tail as bad.
    let tail = expected.len().abs_diff(got.len()) as u64;
    let first = first.unwrap_or(expected.len().min(got.len()));
    let window = |b: &[u8]| hex(&b[first.min(b.len())..(first + 16).min(b.len())]);
    Some(Mismatch {
        first_bad_offset: first as u64,
        bad_bytes: bad + tail,
        expected: window(expected),
        got: window(got),
        damage: match (zeros, unchanged) {
            (true, _) => Damage::Zeros,
            (_, true) => Damage::Unchanged,
            _ => Damage::Garbage,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_neither_constant_nor_shared_between_pairs() {
        let a = pattern(seed(0, 1), 1 << 16);
        let b = pattern(seed(1, 0), 1 << 16);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
        assert!(!a.chunks(4).any(|w| w == FILL.to_ne_bytes()));
        assert!(compare(&a, &a).is_none());
    }

    #[test]
    fn damage_is_classified() {
        let sent = pattern(7, 1 << 16);
        let mut got = sent.clone();
        got[40_000..40_100].fill(0);
        let m = compare(&sent, &got).unwrap();
        assert_eq!((m.first_bad_offset, m.damage), (40_000, Damage::Zeros));
        assert!(m.bad_bytes <= 100 && m.bad_bytes > 90, "{}", m.bad_bytes);
        assert_eq!(m.got, "00".repeat(16));
        assert_eq!(m.expected, hex(&sent[40_000..40_016]));

        let mut got = sent.clone();
        for w in got[8..].chunks_mut(4) {
            w.copy_from_slice(&FILL.to_ne_bytes());
        }
        assert_eq!(compare(&sent, &got).unwrap().damage, Damage::Unchanged);

        let mut got = sent.clone();
        got[65_530] ^= 0x40;
        let m = compare(&sent, &got).unwrap();
        assert_eq!((m.first_bad_offset, m.bad_bytes), (65_530, 1));
        assert_eq!(m.damage, Damage::Garbage);
        assert_eq!(m.expected.len(), 12, "the window stops at the end");
    }
}
