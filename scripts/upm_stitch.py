#!/usr/bin/env python3
"""Writes a manifest that stitches shards of different epochs of one shard folder (an attack
on UPM: cross-epoch assembly). The epoch folders must still exist (`shard rekey --keep-old`).

usage: upm_stitch.py DIR OUT.json E0 E1 ... (one epoch number per shard)

OUT.json is written into DIR (shard files must lie under the manifest's folder), with the
sha256 of the chosen files, so `ortho-opt compare MODEL DIR/OUT.json` runs the stitched chain.
"""
import hashlib, json, os, sys


def main():
    d, out, epochs = sys.argv[1], sys.argv[2], [int(e) for e in sys.argv[3:]]
    man = json.load(open(os.path.join(d, "manifest.json")))
    if len(epochs) != len(man["shards"]):
        sys.exit(f"{len(man['shards'])} shards, {len(epochs)} epochs given")
    for s, e in zip(man["shards"], epochs):
        f = f"epoch-{e:06d}/" + os.path.basename(s["file"])
        s["file"] = f
        s["sha256"] = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
    man["stitched_epochs"] = epochs
    json.dump(man, open(os.path.join(d, os.path.basename(out)), "w"), indent=2)


if __name__ == "__main__":
    main()
