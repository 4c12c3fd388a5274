#!/usr/bin/env python3
"""Export transformer models through torch's two ONNX exporters (issue 11, deliverable 2).

Builds models from transformers configs (no model hub) and exports each one twice: with
`torch.onnx.export(dynamo=True)` (the torch.export / onnxscript exporter) and with `dynamo=False`
(the TorchScript exporter). Every export writes `<name>.<exporter>.onnx` (one file, weights inside).

Needs torch, transformers, onnx and onnxscript (a venv with the CPU torch wheel); the Rust tests never
run this script, they read its committed outputs.

Commands:
  # SmolLM2-135M with the fixture's weights (~540 MB per file; not committed):
  python scripts/export_torch.py smollm2 --fixture $ORTHO_FIXTURES/smollm2-135m/decomposed.onnx \
      --out /root/.cache/ortho-opt/exporters
  # small random-weight models of several families (not committed):
  python scripts/export_torch.py families --out /root/.cache/ortho-opt/exporters
  # the tiny committed test models (seed 0; each file a few hundred KB at most):
  python scripts/export_torch.py families --tiny --out tests/data/exporters

Each model is exported with and without an `attention_mask` input (`*-mask.*`); masks take the
exporter's own spelling (Range/Where/CumSum/...), which is the point of the exercise.
"""

import argparse
import os
import sys

import numpy as np
import torch

SEED = 0


class LogitsOnly(torch.nn.Module):
    """Wraps a transformers model so the graph returns one tensor (logits or the last hidden state)."""

    def __init__(self, inner, with_mask, output):
        super().__init__()
        self.inner = inner
        self.with_mask = with_mask
        self.output = output

    def forward(self, input_ids, attention_mask=None):
        kwargs = {"use_cache": False} if self.output == "logits" else {}
        if self.with_mask:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        else:
            out = self.inner(input_ids=input_ids, **kwargs)
        return out.logits if self.output == "logits" else out.last_hidden_state


def patch_packed_sequence_check_for_torchscript():
    """transformers' packed-sequence check (used when no attention mask is given) does not export
    through the TorchScript exporter: it has no symbolic for `aten::diff`, and it exports the
    `bool.cumsum` that follows as a CumSum on bool, which onnxruntime rejects. The same function with
    the difference spelled as slices and the flags cast to int64 first (same values), as a user of
    that exporter would have to write it."""
    from transformers import masking_utils

    def find_packed_sequence_indices(position_ids):
        first = position_ids[:, :1] - 1
        full = torch.cat([first, position_ids], dim=-1)
        step = full[:, 1:] - full[:, :-1]
        return (step != 1).to(torch.int64).cumsum(-1)

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    return lambda: setattr(masking_utils, "find_packed_sequence_indices", original)


def strip_node_metadata(path):
    """Drops the per-node stack traces and doc strings the exporters record (most of a tiny file's
    bytes); the graph itself is untouched."""
    import onnx

    model = onnx.load(path)
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    onnx.save(model, path)


def export_both(model, name, out_dir, vocab, output, with_mask, exporters, strip=False):
    """Exports `model` with the requested exporters; returns the written paths."""
    model.eval()
    wrapped = LogitsOnly(model, with_mask, output).eval()
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab, (2, 16), generator=g, dtype=torch.int64)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, :3] = 0  # left padding in row 1, so the mask has to matter at export time
    args = (ids, mask) if with_mask else (ids,)
    input_names = ["input_ids", "attention_mask"] if with_mask else ["input_ids"]
    out_name = "logits" if output == "logits" else "last_hidden_state"
    suffix = "-mask" if with_mask else ""
    written = []
    for exporter in exporters:
        path = os.path.join(out_dir, f"{name}{suffix}.{exporter}.onnx")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=64)
            # The tiny models have 64-entry position tables; the seq bound has to respect them.
            seq = torch.export.Dim("seq", min=2, max=64 if strip else 2048)
            shapes = {"input_ids": {0: batch, 1: seq}}
            if with_mask:
                shapes["attention_mask"] = {0: batch, 1: seq}
            with torch.no_grad():
                prog = torch.onnx.export(
                    wrapped,
                    args,
                    dynamo=True,
                    input_names=input_names,
                    output_names=[out_name],
                    dynamic_shapes=shapes,
                    optimize=True,
                )
            prog.save(path, external_data=False)
        else:
            axes = {n: {0: "batch", 1: "seq"} for n in input_names}
            axes[out_name] = {0: "batch", 1: "seq"}
            restore = patch_packed_sequence_check_for_torchscript()
            with torch.no_grad():
                torch.onnx.export(
                    wrapped,
                    args,
                    path,
                    dynamo=False,
                    input_names=input_names,
                    output_names=[out_name],
                    dynamic_axes=axes,
                    opset_version=17,
                    do_constant_folding=True,
                )
            restore()
        if strip:
            strip_node_metadata(path)
        written.append(path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)", flush=True)
    return written


def smollm2_model(fixture):
    """SmolLM2-135M as LlamaForCausalLM carrying the fixture graph's weights (MatMul weights are [in, out])."""
    import onnx
    from onnx import numpy_helper
    from transformers import LlamaConfig, LlamaForCausalLM

    graph = onnx.load(fixture).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    state = {}
    for name, tensor in weights.items():
        if not name.startswith("model."):
            continue
        array = np.array(tensor, dtype=np.float32)
        is_linear = name.endswith("_proj.weight")
        state[name] = torch.from_numpy(np.ascontiguousarray(array.T if is_linear else array))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        sys.exit(f"weights do not fit the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model, config.vocab_size


def family_models(tiny):
    """Small random-weight models of several families, built from transformers configs (seeded)."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    width, layers, vocab, ffn = (32, 2, 128, 64) if tiny else (128, 2, 1024, 384)
    # Learned position tables (GPT-2, BERT) are max_positions × width weights: small in the tiny files.
    max_positions = 64 if tiny else 2048
    heads = 4
    head_dim = width // heads
    specs = {
        "llama": (
            LlamaForCausalLM,
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=2,
                head_dim=head_dim,
                rms_norm_eps=1e-5,
                rope_theta=10000.0,
                max_position_embeddings=max_positions,
                tie_word_embeddings=True,
            ),
            "logits",
        ),
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(
                vocab_size=vocab,
                n_embd=width,
                n_layer=layers,
                n_head=heads,
                n_positions=max_positions,
                n_inner=ffn,
                activation_function="gelu_new",
            ),
            "logits",
        ),
        "bert": (
            BertModel,
            BertConfig(
                vocab_size=vocab,
                hidden_size=width,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=ffn,
                max_position_embeddings=max_positions,
                hidden_act="gelu",
            ),
            "hidden",
        ),
        "qwen2": (
            Qwen2ForCausalLM,
            Qwen2Config(
                vocab_size=vocab,
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=2,
                max_position_embeddings=max_positions,
                tie_word_embeddings=True,
            ),
            "logits",
        ),
        "gemma2": (
            Gemma2ForCausalLM,
            Gemma2Config(
                vocab_size=vocab,
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=1,
                head_dim=head_dim,
                max_position_embeddings=max_positions,
                sliding_window=4096,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                query_pre_attn_scalar=head_dim,
            ),
            "logits",
        ),
    }
    for name, (cls, config, output) in specs.items():
        torch.manual_seed(SEED)
        config._attn_implementation = "eager" if name == "gemma2" else "sdpa"
        model = cls(config)
        yield name, model, vocab, output


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["smollm2", "families"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--fixture", help="decomposed.onnx of the SmolLM2 fixture (for `smollm2`)")
    parser.add_argument("--tiny", action="store_true", help="the tiny committed test sizes")
    parser.add_argument("--only", nargs="*", help="families to export (default: all)")
    parser.add_argument("--exporters", nargs="*", default=["dynamo", "torchscript"])
    parser.add_argument("--no-mask", action="store_true", help="skip the attention_mask variants")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)
    masks = [False] if args.no_mask else [False, True]
    if args.what == "smollm2":
        if not args.fixture:
            sys.exit("smollm2 needs --fixture PATH/decomposed.onnx")
        model, vocab = smollm2_model(args.fixture)
        for with_mask in masks:
            export_both(model, "smollm2", args.out, vocab, "logits", with_mask, args.exporters)
        return
    for name, model, vocab, output in family_models(args.tiny):
        if args.only and name not in args.only:
            continue
        for with_mask in masks:
            export_both(model, name, args.out, vocab, output, with_mask, args.exporters, args.tiny)


if __name__ == "__main__":
    main()
