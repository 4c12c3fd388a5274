#!/usr/bin/env python3
"""Runs exported models through `ortho-opt run` and onnxruntime on the same inputs and prints the
largest differences (issue 11, deliverable 2).

  python scripts/export_check.py [--bin target/release/ortho-opt] [--batch 2 --seq 16] MODEL.onnx...

Inputs: `input_ids` random in [0, vocab) (seed 0); `attention_mask`, when the model has one, all ones
except three left-padding zeros in the last row. Prints one line per model:
`model  max|d|  max|d|/max|ort|  status`. Needs numpy and onnxruntime (the fixtures venv has both).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort


def feeds_for(session, batch, seq, vocab):
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == "attention_mask":
            mask = np.ones((batch, seq), dtype=np.int64)
            mask[-1, :3] = 0
            feeds[inp.name] = mask
        elif inp.name in ("input_ids", "token_type_ids"):
            high = vocab if inp.name == "input_ids" else 2
            feeds[inp.name] = rng.integers(0, high, size=(batch, seq), dtype=np.int64)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        else:
            sys.exit(f"{inp.name}: no rule for this input")
    return feeds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--bin", default="target/release/ortho-opt")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=None, help="default: the largest the model allows")
    args = parser.parse_args()
    worst = 0.0
    for model in args.models:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        vocab = args.vocab or 128
        feeds = feeds_for(session, args.batch, args.seq, vocab)
        expected = session.run(None, feeds)
        names = [o.name for o in session.get_outputs()]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [args.bin, "run", model, "-o", tmp]
            for name, value in feeds.items():
                path = os.path.join(tmp, f"in_{name}.npy")
                np.save(path, value)
                cmd += ["--input", f"{name}={path}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{os.path.basename(model)}  FAILED: {done.stderr.strip()[:2000]}")
                worst = float("inf")
                continue
            for name, want in zip(names, expected):
                got = np.load(os.path.join(tmp, f"{name}.npy"))
                if got.shape != want.shape:
                    print(f"{os.path.basename(model)} {name}  shape {got.shape} vs {want.shape}")
                    worst = float("inf")
                    continue
                diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                rel = diff / max(float(np.max(np.abs(want))), 1e-30)
                worst = max(worst, rel)
                line = f"{os.path.basename(model)} {name}  max|d| {diff:.3e}  rel {rel:.3e}"
                if "attention_mask" in feeds:
                    # Padded positions attend to nothing; their outputs are defined by the mask's
                    # large negative constant and are meaningless, so report the real ones apart.
                    real = feeds["attention_mask"].astype(bool)
                    d_real = float(np.max(np.abs(got[real].astype(np.float64) - want[real])))
                    line += f"  (unpadded positions: max|d| {d_real:.3e})"
                print(line)
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
