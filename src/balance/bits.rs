//! A small set of member indices for one decision (members already walked or already
//! returned). Owns only that; must not grow beyond the member count it is used with.
//!
//! The first 128 indices live inline, so a decision over a typical set never allocates; larger
//! indices spill into a vector that is only allocated when such an index is inserted.

#[derive(Debug, Clone, Default)]
pub(crate) struct Bits {
    inline: u128,
    spill: Vec<u64>,
}

const INLINE: usize = 128;

impl Bits {
    pub(crate) fn contains(&self, index: usize) -> bool {
        if index < INLINE {
            return self.inline & (1u128 << index) != 0;
        }
        let i = index - INLINE;
        self.spill.get(i / 64).is_some_and(|word| word & (1u64 << (i % 64)) != 0)
    }

    /// Insert `index`; true if it was not present.
    pub(crate) fn insert(&mut self, index: usize) -> bool {
        if index < INLINE {
            let bit = 1u128 << index;
            let fresh = self.inline & bit == 0;
            self.inline |= bit;
            return fresh;
        }
        let i = index - INLINE;
        let word = i / 64;
        if self.spill.len() <= word {
            self.spill.resize(word + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        let fresh = self.spill[word] & bit == 0;
        self.spill[word] |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_and_finds_inline_and_spilled_indices() {
        let mut bits = Bits::default();
        for i in [0usize, 1, 63, 64, 127, 128, 129, 191, 192, 1000] {
            assert!(!bits.contains(i));
            assert!(bits.insert(i));
            assert!(bits.contains(i));
            assert!(!bits.insert(i));
        }
        for i in [2usize, 65, 126, 130, 193, 999, 1001, 5000] {
            assert!(!bits.contains(i));
        }
    }
}
