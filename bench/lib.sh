# shellcheck shell=bash
# Sourced by the bench/ scripts: where the repository is and how they get the coinstream binary
# they measure when none is given.

# The repository root.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo builds: the caller's CARGO_TARGET_DIR, else the target folder the tests keep warm.
BENCH_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/coinstream/target}"

# Builds the release binary into BENCH_TARGET_DIR (cargo skips it when nothing changed) and
# prints its path; cargo's own output goes to stderr.
release_build() {
  (cd "$ROOT" && CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release --quiet --bin coinstream) >&2
  echo "$BENCH_TARGET_DIR/release/coinstream"
}
