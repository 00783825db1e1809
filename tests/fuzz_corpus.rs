//! Replays the committed fuzz corpus through `tether::fuzzing` on stable Rust, so every input a
//! fuzzer once found interesting (and every crash, once fixed) is checked by `cargo test`.
//!
//! Inputs: `fuzz/corpus/TARGET/*` (kept small with `cargo fuzz cmin`) and
//! `fuzz/regressions/TARGET/*` (inputs that once crashed, named for what they caught). Each
//! directory must belong to a target of `tether::fuzzing::TARGETS`, and each target to a
//! `fuzz/fuzz_targets/TARGET.rs`, so a renamed or forgotten target fails here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tether::fuzzing::TARGETS;

/// Targets that exist only with a feature this build may lack.
const FEATURE_GATED: &[&str] = &["stomp"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("read a corpus entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// The names of the subdirectories of `dir`.
fn subdirectories(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("a directory name").to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, target) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files_in(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
                replayed += 1;
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    failures.push(format!("{}: {message}", file.display()));
                }
            }
        }
    }
    eprintln!("replayed {replayed} fuzz inputs in {:?}", started.elapsed());
    assert!(replayed > 0, "no fuzz corpus found under {}", fuzz_dir().display());
    assert!(failures.is_empty(), "{} fuzz inputs fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_corpus_directory_and_fuzz_target_belongs_to_an_entry_point() {
    let known = |name: &str| TARGETS.iter().any(|(n, _)| *n == name) || FEATURE_GATED.contains(&name);
    for kind in ["corpus", "regressions"] {
        for dir in subdirectories(&fuzz_dir().join(kind)) {
            assert!(known(&dir), "fuzz/{kind}/{dir} belongs to no target of tether::fuzzing::TARGETS");
        }
    }
    let targets = files_in(&fuzz_dir().join("fuzz_targets"));
    assert!(!targets.is_empty(), "no fuzz/fuzz_targets");
    for file in &targets {
        let stem = file.file_stem().expect("a file name").to_string_lossy();
        assert!(known(&stem), "{} calls no entry point of tether::fuzzing::TARGETS", file.display());
    }
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(file.exists(), "tether::fuzzing::{name} has no {}", file.display());
    }
}
