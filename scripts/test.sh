#!/usr/bin/env bash
# THE test command:  scripts/test.sh [extra cargo-nextest args...]
#   e.g. scripts/test.sh -p ortho-ir        scripts/test.sh -E 'test(node_tests)'
#
# 1. prepares the fixtures with scripts/fixtures.sh (idempotent; ${ORTHO_FIXTURES:-$HOME/.cache/ortho-opt/fixtures})
# 2. exports ORTHO_FIXTURES (fixture root) and ORTHO_PYTHON (the fixtures' venv python, which has
#    numpy, onnx==1.23.2, onnxruntime; used by tests that call fixtures/tools/*.py)
# 3. runs  cargo nextest run --workspace --release --no-fail-fast "$@"
#    (ORTHO_CARGO_PROFILE=NAME uses `--cargo-profile NAME` instead of `--release`)
# CI=true is set, so insta fails on missing or changed snapshots (INSTA_UPDATE is never set here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CI=true
unset INSTA_UPDATE INSTA_FORCE_PASS
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

ORTHO_FIXTURES="$(bash "$ROOT/scripts/fixtures.sh" | tail -n 1)"
export ORTHO_FIXTURES
export ORTHO_PYTHON="$ORTHO_FIXTURES/venv/bin/python"
if [ ! -x "$ORTHO_PYTHON" ]; then
  echo "error: $ORTHO_PYTHON missing after scripts/fixtures.sh" >&2
  exit 1
fi
echo "ORTHO_FIXTURES=$ORTHO_FIXTURES"
echo "ORTHO_PYTHON=$ORTHO_PYTHON"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it (cargo install cargo-nextest --locked)"
  cargo install cargo-nextest --locked
fi

if [ -n "${ORTHO_CARGO_PROFILE:-}" ]; then
  PROFILE_ARGS=(--cargo-profile "$ORTHO_CARGO_PROFILE")
else
  PROFILE_ARGS=(--release)
fi
exec cargo nextest run --workspace "${PROFILE_ARGS[@]}" --no-fail-fast "$@"
