#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with the Rust toolchain: installs what the
# tests need when it is missing (see scripts/test-deps.sh), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/test-deps.sh ]; then
  scripts/test-deps.sh
fi
cargo test --all-targets "$@"
