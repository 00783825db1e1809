//! Entry points for fuzzers and for the corpus replay test: each takes arbitrary bytes, must
//! never panic, and checks the invariants of what it drives.
//!
//! Owns: one function per cargo-fuzz target (`fuzz/fuzz_targets/NAME.rs` calls the function
//! of the same name, listed in [`TARGETS`]; `tests/fuzz_corpus.rs` replays `fuzz/corpus/NAME`
//! and `fuzz/regressions/NAME` through the same list) and the small reference implementations
//! they compare the real code against. A broken invariant panics with a message saying which
//! one; that panic is what the fuzzer reports as a crash. Must not: be used by any other room
//! (it sits last in the layout), keep state between calls beyond fixtures built once, or do
//! I/O other than reading `tests/fixtures/jwt` and the files a fuzzed config names.
//!
//! Reaching `pub(crate)` items from inside the crate is the point of living here: the fuzz
//! crate and the replay test only see these functions, so what the rest of the crate exposes
//! does not grow (`proxy::path` is crate-visible, like `proxy::headers`, for this).
//!
//! # Reading an input
//! Targets whose subject is text (a config, a request head, a path) read it as is, with at
//! most a leading control byte, so a corpus stays readable and seeds are easy to write.
//! Targets that need structure read it from the front (`input::Input`); past the end every read
//! gives zeros, so every byte string is a valid input and the fuzzer never wastes runs on
//! rejected ones. Where an invariant is "the same whatever the chunking", split points come
//! from a seed in the input and the bytes are also fed one at a time.

mod config;
mod cookie;
mod frames;
mod head;
mod input;
mod jwt;
mod path;
#[cfg(feature = "app")]
mod stomp;

pub use config::config;
pub use cookie::cookie;
pub use frames::frames;
pub use head::request_head;
pub use jwt::jwt;
pub use path::path;
#[cfg(feature = "app")]
pub use stomp::stomp;

/// A fuzz entry point: arbitrary bytes in, a panic only when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its `fuzz/fuzz_targets/*.rs` file and of its corpus
/// directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("cookie", cookie),
    ("frames", frames),
    ("jwt", jwt),
    ("path", path),
    ("request_head", request_head),
    #[cfg(feature = "app")]
    ("stomp", stomp),
];
