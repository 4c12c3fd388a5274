#!/usr/bin/env python3
"""Runs a shard chain (manifest.json) in stock onnxruntime and compares it with a whole model.

usage: upm_ort_chain.py MODEL.onnx MANIFEST_OR_DIR TOKENS.bin [--windows N --seqlen L]

TOKENS.bin: raw little-endian uint16 token ids (fixtures/text/*.bin). Prints one JSON object:
max |Δlogit|, argmax agreement, perplexity of both and the relative ΔPPL, and whether every
shard loaded in onnxruntime. Checks every shard's sha256 against the manifest first.
"""
import argparse, hashlib, json, os, sys
import numpy as np
import onnxruntime as ort


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("manifest")
    ap.add_argument("tokens")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    a = ap.parse_args()
    mpath = a.manifest
    if os.path.isdir(mpath):
        mpath = os.path.join(mpath, "manifest.json")
    man = json.load(open(mpath))
    base = os.path.dirname(mpath)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = []
    for s in man["shards"]:
        f = os.path.join(base, s["file"])
        h = hashlib.sha256(open(f, "rb").read()).hexdigest()
        if h != s["sha256"]:
            sys.exit(f"{f}: sha256 {h} does not match the manifest")
        sessions.append(ort.InferenceSession(f, so, providers=["CPUExecutionProvider"]))
    whole = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    ids = np.fromfile(a.tokens, dtype="<u2").astype(np.int64)
    n = a.windows * a.seqlen
    batch = ids[:n].reshape(a.windows, a.seqlen)
    ref = whole.run(None, {"input_ids": batch})[0]
    prev = {}
    for s, sess in zip(man["shards"], sessions):
        feeds = {}
        for inp in s["inputs"]:
            src = inp["from"]
            feeds[inp["name"]] = batch if "model_input" in src else prev[src["boundary"]]
        outs = sess.run(None, feeds)
        prev = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
    got = prev[man["model_outputs"][0]["name"]]

    def ppl(lg):
        lp = log_softmax(lg[:, :-1].astype(np.float64))
        tgt = batch[:, 1:]
        nll = -np.take_along_axis(lp, tgt[..., None], -1).mean()
        return float(np.exp(nll))

    pa, pb = ppl(ref), ppl(got)
    print(json.dumps({
        "shards_loaded": len(sessions),
        "epoch": man["epoch"],
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "ppl_whole": pa,
        "ppl_chain": pb,
        "delta_ppl_rel": (pb - pa) / pa,
    }))


if __name__ == "__main__":
    main()
