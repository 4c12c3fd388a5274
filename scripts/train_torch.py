#!/usr/bin/env python3
"""The PyTorch side of `cargo bench --bench train` (issue 15): SmolLM2-135M in torch with the
weights of ortho-opt's ONNX fixture, for a side-by-side training step and a gradient comparison.

Run by benches/train.rs with the torch venv's python (never by the test tier):

  train_torch.py step --model decomposed.onnx --ids IDS.i64 --batch B --seqlen S \
      --threads T --runs N [--lr 1e-5]
      One warm-up step then N timed steps (forward, mean token cross-entropy, backward,
      global-norm clip 1.0, AdamW with decoupled weight decay 0), on the token windows in IDS
      (little-endian int64, (1 + N) × B × (S + 1) ids: inputs and next-token labels, the same
      windows the Rust side trains on). Prints one JSON line.

  train_torch.py grad --model decomposed.onnx --dir DIR --threads T
      The 2-block prefix of tests/autodiff_real.rs (blocks 0 and 1, loss = Σ h ⊙ probe over the
      residual stream after block 1) in f32; DIR holds `ids.i64`, `probe.f32`, `meta.json`
      (`seq`, `params`: [[name, shape], ...]) and ortho-opt's gradients `<i>.f32` in that order.
      Prints one JSON line: the norm-wise relative error ‖g_ours − g_torch‖ / ‖g_torch‖ per tensor.

The model is written by hand from the ONNX graph's own spelling (decomposed.onnx): RMSNorm
x / sqrt(mean(x²) + 1e-5) · w, rotate-half RoPE with the graph's `rope.inv_freq`, grouped-query
attention (9 query heads over 3 key/value heads, head_dim 64, scale 1/8, causal), SiLU-gated
MLP, MatMul weights stored [in, out] as in the graph, tied embedding as the head.

Peak memory: `peak_rss_kib` is the process's whole-life peak (ru_maxrss, loading included);
`step_hwm_kib` is VmHWM after it was reset (`/proc/self/clear_refs` ← 5) once the model and
optimizer were built, i.e. the peak resident memory of the training steps themselves.
"""

import argparse
import gc
import json
import resource
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HEADS, KV_HEADS, HEAD_DIM, EPS = 9, 3, 64, 1e-5


def load_weights(path, layers=None):
    """The float initializers of the ONNX model, by name, as torch tensors (copies)."""
    m = onnx.load(path)
    out = {}
    for t in m.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        if layers is not None and t.name.startswith("model.layers."):
            if int(t.name.split(".")[2]) >= layers:
                continue
        out[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
    del m
    gc.collect()
    return out


def n_layers(weights):
    return 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("model.layers."))


def rms_norm(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def block(p, i, h, cos, sin):
    pre = f"model.layers.{i}."
    bsz, seq, _ = h.shape
    x = rms_norm(h, p[pre + "input_layernorm.weight"])
    q = (x @ p[pre + "self_attn.q_proj.weight"]).view(bsz, seq, HEADS, HEAD_DIM).transpose(1, 2)
    k = (x @ p[pre + "self_attn.k_proj.weight"]).view(bsz, seq, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = (x @ p[pre + "self_attn.v_proj.weight"]).view(bsz, seq, KV_HEADS, HEAD_DIM).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    # Query head j reads key/value head j // 3, as the graph's [KV, REP] reshape does.
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125, enable_gqa=True)
    o = o.transpose(1, 2).reshape(bsz, seq, HEADS * HEAD_DIM)
    h = h + o @ p[pre + "self_attn.o_proj.weight"]
    x = rms_norm(h, p[pre + "post_attention_layernorm.weight"])
    g = x @ p[pre + "mlp.gate_proj.weight"]
    u = x @ p[pre + "mlp.up_proj.weight"]
    return h + (F.silu(g) * u) @ p[pre + "mlp.down_proj.weight"]


def rope_tables(p, seq):
    pos = torch.arange(seq, dtype=torch.float32)[:, None]
    freqs = pos * p["rope.inv_freq"]
    freqs = torch.cat((freqs, freqs), dim=-1)
    return freqs.cos(), freqs.sin()


def stream(p, ids, layers):
    """The residual stream after `layers` blocks."""
    cos, sin = rope_tables(p, ids.shape[1])
    h = p["model.embed_tokens.weight"][ids]
    for i in range(layers):
        h = block(p, i, h, cos, sin)
    return h


def logits(p, ids, layers):
    h = rms_norm(stream(p, ids, layers), p["model.norm.weight"])
    return h @ p["model.embed_tokens.weight"].t()


def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cmd_step(a):
    torch.set_num_threads(a.threads)
    w = load_weights(a.model)
    layers = n_layers(w)
    params = {k: torch.nn.Parameter(v) for k, v in w.items() if k.startswith("model.")}
    consts = {k: v for k, v in w.items() if not k.startswith("model.")}
    del w
    p = {**consts, **params}
    opt = torch.optim.AdamW(list(params.values()), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    ids = np.fromfile(a.ids, dtype="<i8").reshape(-1, a.batch, a.seqlen + 1)
    gc.collect()
    reset_hwm()

    def step(win):
        win = torch.from_numpy(win)
        inp, lab = win[:, :-1], win[:, 1:]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        z = logits(p, inp, layers)
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), lab.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        t3 = time.perf_counter()
        return float(loss), float(norm), (t1 - t0, t2 - t1, t3 - t2)

    warm = step(ids[0])
    times, losses, parts = [], [], []
    for win in ids[1 : 1 + a.runs]:
        t = time.perf_counter()
        loss, norm, part = step(win)
        times.append(time.perf_counter() - t)
        losses.append(loss)
        parts.append(part)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(v.numel() for v in params.values()),
        "warmup_loss": warm[0],
        "secs": times,
        "losses": losses,
        # Per timed step: forward (with the loss), backward, clip + AdamW.
        "forward_backward_adamw_secs": parts,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "step_hwm_kib": hwm_kib(),
    }))


def cmd_grad(a):
    torch.set_num_threads(a.threads)
    meta = json.load(open(f"{a.dir}/meta.json"))
    seq = meta["seq"]
    w = load_weights(a.model, layers=2)
    ids = torch.from_numpy(np.fromfile(f"{a.dir}/ids.i64", dtype="<i8").reshape(1, seq))
    probe = torch.from_numpy(np.fromfile(f"{a.dir}/probe.f32", dtype="<f4").reshape(1, seq, -1))
    names = [n for n, _ in meta["params"]]
    for n in names:
        w[n].requires_grad_(True)
    loss = (stream(w, ids, 2) * probe).sum()
    loss.backward()
    rows = []
    for i, (n, shape) in enumerate(meta["params"]):
        ours = torch.from_numpy(np.fromfile(f"{a.dir}/{i}.f32", dtype="<f4").reshape(shape))
        ref = w[n].grad
        # Differences in f64, so the comparison itself adds no rounding.
        err = float((ours.double() - ref.double()).norm() / ref.double().norm())
        rows.append({"name": n, "rel": err, "norm": float(ref.double().norm())})
    print(json.dumps({"torch": torch.__version__, "loss": float(loss), "tensors": rows}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--model", required=True)
    s.add_argument("--ids", required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--seqlen", type=int, required=True)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--runs", type=int, default=2)
    s.add_argument("--lr", type=float, default=1e-5)
    g = sub.add_parser("grad")
    g.add_argument("--model", required=True)
    g.add_argument("--dir", required=True)
    g.add_argument("--threads", type=int, required=True)
    a = ap.parse_args()
    {"step": cmd_step, "grad": cmd_grad}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
