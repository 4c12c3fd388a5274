#!/usr/bin/env python3
"""Per-op time of one forward in onnxruntime (1 thread): median total of RUNS runs, then the
op-type totals from one profiled run (issue 11, the transformer ops of exported graphs).

  python scripts/export_bench.py MODEL.onnx [--seq 128] [--runs 5] [--ids OUT.npy]

`--ids` also saves the input ids it used, so `ortho-opt run MODEL --input input_ids=OUT.npy
--threads 1 --profile -o DIR` can time the same feed.
"""

import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ids")
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(0, 49152, size=(1, args.seq), dtype=np.int64)
    if args.ids:
        np.save(args.ids, ids)

    def session(profile_dir=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "ort")
        return ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])

    feeds = {}
    s = session()
    for i in s.get_inputs():
        feeds[i.name] = ids if i.name == "input_ids" else np.ones_like(ids)
    s.run(None, feeds)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t)
    print(f"onnxruntime 1 thread, 1x{args.seq}: median {statistics.median(times) * 1e3:.1f} ms of {args.runs}")
    with tempfile.TemporaryDirectory() as tmp:
        p = session(tmp)
        p.run(None, feeds)
        p.run(None, feeds)
        trace = json.load(open(p.end_profiling()))
    per_op = collections.defaultdict(float)
    count = collections.Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            per_op[op] += e["dur"] / 2e3  # two profiled runs, µs → ms per run
            count[op] += 1
    for op, ms in sorted(per_op.items(), key=lambda x: -x[1]):
        print(f"  {op:24s} {ms:8.2f} ms  ({count[op] // 2} nodes)")


if __name__ == "__main__":
    main()
