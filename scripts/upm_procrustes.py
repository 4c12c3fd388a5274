#!/usr/bin/env python3
"""Procrustes attack on a folded UPM shard set: estimate the epoch change R (epoch A → B) from
two epochs of ONE shard, then use it to move ANOTHER shard of epoch A into epoch B's basis and
write a stitched manifest (shards of epoch B plus the converted one).

usage: upm_procrustes.py DIR EPOCH_A EPOCH_B FIT_SHARD TARGET_SHARD

Needs both epoch folders (`shard rekey --keep-old`). The fit uses the non-square linears of the
fit shard (k/v/gate/up readers: W_B = Rᵀ W_A; down writers: W_B = W_A R), i.e. what a holder of
that shard sees; it is checked on the square q/o matrices it did not use. Prints JSON; then run
`ortho-opt compare MODEL DIR/procrustes.json`.
"""
import hashlib, json, os, sys
import numpy as np
import onnx
from onnx import numpy_helper

READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
WRITERS = ("o_proj", "down_proj")


def inits(path):
    m = onnx.load(path)
    return m, {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}


def rows(name, w, d):
    """Row vectors of w in the stream basis (x_B = x_A R), or None."""
    if any(r in name for r in READERS) and w.shape[0] == d:
        return w.T
    if any(r in name for r in WRITERS) and w.shape[1] == d:
        return w
    return None


def main():
    d_, ea, eb, fit, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    f = lambda e, i: os.path.join(d_, f"epoch-{e:06d}", f"shard-{i:03d}.onnx")
    _, a = inits(f(ea, fit))
    _, b = inits(f(eb, fit))
    d = 576
    xa, xb, ha, hb = [], [], [], []
    for n, w in a.items():
        if n not in b or w.ndim != 2:
            continue
        ra, rb = rows(n, w, d), rows(n, b[n], d)
        if ra is None:
            continue
        square = w.shape[0] == w.shape[1]
        (ha if square else xa).append(ra)
        (hb if square else xb).append(rb)
    X, Y = np.concatenate(xa), np.concatenate(xb)
    u, _, vt = np.linalg.svd(X.T @ Y)
    R = u @ vt
    HX, HY = np.concatenate(ha), np.concatenate(hb)
    fit_res = np.linalg.norm(X @ R - Y) / np.linalg.norm(Y)
    held_res = np.linalg.norm(HX @ R - HY) / np.linalg.norm(HY)
    # Move the target shard of epoch A into epoch B's basis with the estimate.
    m, t = inits(f(ea, target))
    changed = 0
    for init in m.graph.initializer:
        w = t[init.name]
        if w.ndim != 2:
            continue
        if any(r in init.name for r in READERS) and w.shape[0] == d:
            nw = R.T @ w
        elif any(r in init.name for r in WRITERS) and w.shape[1] == d:
            nw = w @ R
        elif w.shape[1] == d and w.shape[0] > d:  # embedding / head table rows
            nw = w @ R
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(nw.astype(np.float32), init.name))
        changed += 1
    outdir = os.path.join(d_, "epoch-attack")
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, f"shard-{target:03d}.onnx")
    onnx.save(m, out)
    man = json.load(open(os.path.join(d_, "manifest.json")))
    for s in man["shards"]:
        i = s["index"]
        rel = f"epoch-attack/shard-{i:03d}.onnx" if i == target else f"epoch-{eb:06d}/shard-{i:03d}.onnx"
        s["file"] = rel
        s["sha256"] = hashlib.sha256(open(os.path.join(d_, rel), "rb").read()).hexdigest()
    json.dump(man, open(os.path.join(d_, "procrustes.json"), "w"), indent=2)
    print(json.dumps({
        "fit_rows": int(X.shape[0]),
        "fit_relative_residual": float(fit_res),
        "held_out_relative_residual": float(held_res),
        "target_weights_converted": changed,
        "manifest": os.path.join(d_, "procrustes.json"),
    }))


if __name__ == "__main__":
    main()
