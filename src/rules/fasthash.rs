//! A fast, unkeyed hash for the host index: eight bytes a step (the Fx mix rustc uses).
//!
//! std's SipHash is keyed to resist flooding, where an attacker chooses the keys a table
//! *stores*. The host index stores only names from the rules file and is never written
//! from the network: a request's host is only looked up, and a lookup's cost depends on
//! the stored keys alone. SipHash cost about 250 instructions per request here.

use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` hasher for tables whose keys come from the operator, never from clients.
pub type FastHash = BuildHasherDefault<FxHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The hasher behind [`FastHash`].
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        // The multiply carries entropy only upwards, and the table picks buckets by the
        // low bits: fold the high half down (names differing early would otherwise
        // share buckets).
        let h = self.hash ^ (self.hash >> 33);
        let h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    #[test]
    fn names_hash_apart_and_the_map_finds_them() {
        let h = FastHash::default();
        let names = [
            "a",
            "ab",
            "ab\0",
            "data.example.org",
            "data.example.orh",
            "",
            "localhost",
        ];
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| h.hash_one(n)).collect();
        assert_eq!(hashes.len(), names.len());
        let mut m: HashMap<String, usize, FastHash> = HashMap::default();
        for (i, n) in names.iter().enumerate() {
            m.insert(n.to_string(), i);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(m.get(*n), Some(&i));
        }
        assert_eq!(m.get("data.example.or"), None);
    }
}
