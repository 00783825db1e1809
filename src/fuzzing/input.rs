//! Reading structure out of fuzz bytes, and splitting a stream into seeded chunks.

/// Reads from the front of a fuzz input. Past the end every read yields zeros (or an empty
/// slice), so any byte string decodes to something.
pub(super) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub(super) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub(super) fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.byte());
        }
        v
    }

    /// Up to `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// The bytes up to the next `separator` (consumed, not returned), or everything left.
    pub(super) fn until(&mut self, separator: u8) -> &'a [u8] {
        match self.data.iter().position(|&b| b == separator) {
            Some(i) => {
                let head = &self.data[..i];
                self.data = &self.data[i + 1..];
                head
            }
            None => self.rest(),
        }
    }

    /// Everything left.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// SplitMix64: a tiny deterministic generator for split points.
pub(super) struct SplitMix(u64);

impl SplitMix {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..=max`.
    pub(super) fn below_or_at(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

/// `data` cut into consecutive chunks (empty ones included) whose lengths are drawn from
/// `split`: its low bits pick the largest chunk (1, 2, 3, 7, 16, 64, 512 or 4,096 bytes), so
/// varying `split` covers tiny and coarse splits alike.
pub(super) fn chunks(data: &[u8], split: u64) -> Vec<&[u8]> {
    const LARGEST: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 4096];
    let largest = LARGEST[(split & 7) as usize];
    let mut rng = SplitMix::new(split);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut n = rng.below_or_at(largest).min(rest.len());
        if n == 0 && out.last().is_some_and(|c: &&[u8]| c.is_empty()) {
            // At most one empty chunk in a row: enough to test empty feeds, and bounded.
            n = 1;
        }
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}
