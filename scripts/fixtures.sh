#!/usr/bin/env bash
# Prepares the real-model / conformance fixtures and prints their path (alone, on stdout).
#
#   scripts/fixtures.sh            -> builds into ${ORTHO_FIXTURES:-$HOME/.cache/ortho-opt/fixtures}
#   F=$(scripts/fixtures.sh)       -> F is that path (all build chatter goes to stderr)
#
# Tests find the fixtures through the environment variable ORTHO_FIXTURES (default
# $HOME/.cache/ortho-opt/fixtures) and the fixtures' Python through ORTHO_PYTHON (default
# $ORTHO_FIXTURES/venv/bin/python); scripts/test.sh exports both.
#
# Layout (see fixtures/README.md and fixtures/build.sh):
#   $ORTHO_FIXTURES/venv/bin/python                      numpy onnx==1.23.2 onnxruntime gguf tokenizers
#   $ORTHO_FIXTURES/smollm2-135m/{decomposed,fused}.onnx SmolLM2-135M (opset 17 / opset 23)
#   $ORTHO_FIXTURES/smollm2-135m/tokenizer.json
#   $ORTHO_FIXTURES/text/sotu_{eval,calib}.{txt,smollm2-135m.bin}
#   $ORTHO_FIXTURES/onnx-node-tests/node/test_*/         1,884 ONNX backend node tests
#   $ORTHO_FIXTURES/reference.json                       onnxruntime perplexity of decomposed.onnx
#
# The path is deliberately outside the clone, so CI reruns on the same machine reuse the downloads and
# builds. fixtures/build.sh is idempotent: steps whose output exists are skipped (a few seconds when
# everything is there; about 2-5 minutes and 2.5 GB on a fresh machine). Needs python3 (venv), npm, unzip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
F="${ORTHO_FIXTURES:-$HOME/.cache/ortho-opt/fixtures}"
mkdir -p "$F"
F="$(cd "$F" && pwd)"
# one builder at a time per fixture folder (a developer's run and a CI run may overlap)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$F/.lock"
  flock 9
fi

venv_ok() {
  [ -x "$F/venv/bin/python" ] &&
    "$F/venv/bin/python" -c 'import numpy, onnx, onnxruntime, gguf, tokenizers' >/dev/null 2>&1
}

# build.sh skips the venv step when venv/bin/python exists; an interrupted install leaves a venv
# without its packages, so check the imports and rebuild the venv once if they fail.
if [ -e "$F/venv" ] && ! venv_ok; then
  echo "fixtures: $F/venv is incomplete; recreating it" >&2
  rm -rf "$F/venv"
fi
bash "$ROOT/fixtures/build.sh" "$F" 1>&2
if ! venv_ok; then
  echo "error: $F/venv/bin/python cannot import numpy onnx onnxruntime gguf tokenizers" >&2
  exit 1
fi
echo "$F"
