//! A byte-at-a-time scanner for HTTP/1 request heads that notices what hyper normalises away.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it drops the
//! length and closes the connection afterwards, as RFC 9112 6.3 permits). tether is stricter:
//! such a request is a smuggling attempt and gets a 400. Since hyper hides the dropped header,
//! [`HeadSniffer`] watches the raw bytes of each head as they are read. It keeps a few bytes of
//! state and never buffers the head.

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
/// Longest header name we need to recognise.
const NAME_CAP: usize = TRANSFER_ENCODING.len();

/// What one request head contained, as far as framing is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeadFacts {
    pub(crate) content_length: bool,
    pub(crate) transfer_encoding: bool,
}

impl HeadFacts {
    pub(crate) fn is_length_conflict(&self) -> bool {
        self.content_length && self.transfer_encoding
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct HeadSniffer {
    /// Lines completed so far in this head (0 while reading the request line).
    lines: u32,
    /// Bytes of the current line, not counting a CR right before LF.
    line_len: usize,
    pending_cr: bool,
    /// The current line's first bytes, lowercased, until a ':' or NAME_CAP + 1 bytes.
    name: [u8; NAME_CAP + 1],
    name_len: usize,
    name_done: bool,
    facts: HeadFacts,
}

impl HeadSniffer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Scan `bytes`. When the head ends within them, returns the offset just past its final
    /// LF and the facts, and resets for the next head.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<(usize, HeadFacts)> {
        let mut i = 0;
        while i < bytes.len() {
            if (self.lines == 0 || self.name_done) && !self.pending_cr {
                // Nothing left to learn from this line but where it ends: skip to its CR or LF.
                let rest = &bytes[i..];
                let skip = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
                self.line_len += skip;
                i += skip;
                if i == bytes.len() {
                    break;
                }
            }
            let b = bytes[i];
            i += 1;
            match b {
                b'\n' => {
                    let empty = self.line_len == 0;
                    self.pending_cr = false;
                    if empty && self.lines > 0 {
                        let facts = self.facts;
                        *self = Self::default();
                        return Some((i, facts));
                    }
                    if !empty {
                        self.end_line();
                    }
                }
                b'\r' => {
                    if self.pending_cr {
                        self.push(b'\r');
                    }
                    self.pending_cr = true;
                }
                _ => {
                    if self.pending_cr {
                        self.pending_cr = false;
                        self.push(b'\r');
                    }
                    self.push(b);
                }
            }
        }
        None
    }

    fn push(&mut self, b: u8) {
        self.line_len += 1;
        if self.lines == 0 || self.name_done {
            return;
        }
        if b == b':' {
            self.name_done = true;
            let name = &self.name[..self.name_len];
            if name == CONTENT_LENGTH {
                self.facts.content_length = true;
            } else if name == TRANSFER_ENCODING {
                self.facts.transfer_encoding = true;
            }
        } else if self.name_len < self.name.len() {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            // Longer than any name we look for.
            self.name_done = true;
        }
    }

    fn end_line(&mut self) {
        self.lines += 1;
        self.line_len = 0;
        self.name_len = 0;
        self.name_done = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff_all(head: &[u8]) -> Option<(usize, HeadFacts)> {
        HeadSniffer::new().feed(head)
    }

    #[test]
    fn finds_conflicting_framing_headers_in_any_case() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTRANSFER-encoding: chunked\r\n\r\nbody";
        let (end, facts) = sniff_all(head).unwrap();
        assert_eq!(&head[end..], b"body");
        assert!(facts.is_length_conflict());
    }

    #[test]
    fn a_plain_head_has_no_conflict_and_bare_lf_heads_end() {
        let (end, facts) = sniff_all(b"GET / HTTP/1.1\nHost: a\ncontent-length: 0\n\n").unwrap();
        assert_eq!(end, 42);
        assert!(facts.content_length && !facts.transfer_encoding);
    }

    #[test]
    fn header_names_that_only_start_alike_do_not_count() {
        let (_, facts) =
            sniff_all(b"GET / HTTP/1.1\r\nContent-Lengthy: 1\r\nX-Transfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(facts, HeadFacts::default());
    }

    #[test]
    fn values_mentioning_the_names_do_not_count() {
        let (_, facts) = sniff_all(b"GET /content-length: HTTP/1.1\r\nX: transfer-encoding:\r\n\r\n").unwrap();
        assert_eq!(facts, HeadFacts::default());
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_answer() {
        let head = b"\r\nPUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        for split in 0..head.len() {
            let mut s = HeadSniffer::new();
            let first = s.feed(&head[..split]);
            let result = first.or_else(|| s.feed(&head[split..]).map(|(n, f)| (n + split, f)));
            let (end, facts) = result.unwrap();
            assert_eq!(end, head.len(), "split at {split}");
            assert!(facts.is_length_conflict(), "split at {split}");
        }
    }

    /// The scanner before lines were skipped through: every byte through `push`.
    fn bytewise(s: &mut HeadSniffer, bytes: &[u8]) -> Option<(usize, HeadFacts)> {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' => {
                    let empty = s.line_len == 0;
                    s.pending_cr = false;
                    if empty && s.lines > 0 {
                        let facts = s.facts;
                        *s = HeadSniffer::default();
                        return Some((i + 1, facts));
                    }
                    if !empty {
                        s.end_line();
                    }
                }
                b'\r' => {
                    if s.pending_cr {
                        s.push(b'\r');
                    }
                    s.pending_cr = true;
                }
                _ => {
                    if s.pending_cr {
                        s.pending_cr = false;
                        s.push(b'\r');
                    }
                    s.push(b);
                }
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn skipping_through_lines_answers_as_reading_every_byte(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"\r\n".to_vec()),
                    proptest::strategy::Just(b"\n".to_vec()),
                    proptest::strategy::Just(b"\r".to_vec()),
                    proptest::strategy::Just(b"Content-Length: 1".to_vec()),
                    proptest::strategy::Just(b"transfer-ENCODING:chunked".to_vec()),
                    proptest::strategy::Just(b"GET / HTTP/1.1".to_vec()),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..24),
                ],
                0..24,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let input: Vec<u8> = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            cuts.push(input.len());
            let (mut fast, mut slow) = (HeadSniffer::new(), HeadSniffer::new());
            let mut start = 0;
            for end in cuts {
                let mut at = start;
                // Every head in the chunk, one answer at a time, from both scanners.
                while at <= end {
                    let (f, s) = (fast.feed(&input[at..end]), bytewise(&mut slow, &input[at..end]));
                    proptest::prop_assert_eq!(f, s);
                    match f {
                        Some((n, _)) if n > 0 => at += n,
                        _ => break,
                    }
                }
                proptest::prop_assert_eq!(fast.line_len, slow.line_len);
                proptest::prop_assert_eq!(fast.lines, slow.lines);
                start = end;
            }
        }
    }

    #[test]
    fn consecutive_heads_are_judged_separately() {
        let mut s = HeadSniffer::new();
        let (_, first) = s.feed(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        let (_, second) = s.feed(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(!first.is_length_conflict() && !second.is_length_conflict());
    }
}
