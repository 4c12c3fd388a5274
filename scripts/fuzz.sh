#!/usr/bin/env bash
# Long fuzzing run (outside CI): the stable harness of tests/fuzz_replay.rs with many mutants per
# corpus file and a fresh seed. Crashing inputs land in fuzz/crashes/<target>/ and are replayed by
# every later test run; commit them with the fix.
#
#   scripts/fuzz.sh [ITERS_PER_CORPUS_FILE] [SEED]
#
# Executions per target = corpus files × (ITERS + 1) + saved crashes; the per-target counts are
# printed at the end ("fuzz TARGET: N executions, K crashes").
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${1:-300000}"
seed="${2:-$(date +%s)}"
echo "fuzzing with ORTHO_FUZZ_ITERS=$iters ORTHO_FUZZ_SEED=$seed"
ORTHO_FUZZ_ITERS="$iters" ORTHO_FUZZ_SEED="$seed" \
  cargo test --release --test fuzz_replay -- --nocapture --test-threads 4 2>&1 \
  | grep -E "^fuzz |test result|panicked|FAILED"
