#!/usr/bin/env python3
"""Makes the folder that travels to the GPU machine for training (tools/code_lm/device_train.sh):
token ids of the train split's first documents (in corpus.py's hashed order, so any prefix
spreads over the whole tree) as xz-compressed uint16 shards, every held-out document, and the
tokenizer, within a size budget (the device takes at most 64 MiB of working tree, the
repository included).

  OUT/train-00000.bin.xz ...   shards of --shard_tokens ids (the last may be shorter); id 0 ends
                               each document
  OUT/heldout.bin.xz           all held-out documents
  OUT/tokenizer.json
  OUT/manifest.json            counts, sizes and sha256 of every file, the corpus manifest

Usage: prepare_carry.py --corpus corpus --tokenizer corpus/tokenizer.json --out corpus/carry
                        [--budget_mb 54] [--shard_tokens 8000000]
"""

import argparse
import array
import hashlib
import json
import lzma
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402


def xz(ids):
    if sys.byteorder != "little":
        ids = array.array("H", ids)
        ids.byteswap()
    return lzma.compress(ids.tobytes(), preset=9 | lzma.PRESET_EXTREME)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="corpus")
    p.add_argument("--tokenizer", default="corpus/tokenizer.json")
    p.add_argument("--out", default="corpus/carry")
    p.add_argument("--budget_mb", type=float, default=54.0)
    p.add_argument("--shard_tokens", type=int, default=8_000_000)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for stale in os.listdir(args.out):
        os.remove(os.path.join(args.out, stale))
    enc = bpe.Encoder(args.tokenizer)
    shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    used = os.path.getsize(args.tokenizer)

    heldout = array.array("H")
    heldout_docs = 0
    for doc in bpe.read_documents(os.path.join(args.corpus, "heldout.txt")):
        heldout.extend(enc.encode(doc))
        heldout.append(bpe.EOT_ID)
        heldout_docs += 1
    data = xz(heldout)
    with open(os.path.join(args.out, "heldout.bin.xz"), "wb") as f:
        f.write(data)
    used += len(data)
    print("held-out: %d documents, %d tokens, %d bytes compressed"
          % (heldout_docs, len(heldout), len(data)), file=sys.stderr, flush=True)

    budget = int(args.budget_mb * 1e6)
    shards, shard, docs, tokens = [], array.array("H"), 0, 0
    done = False
    for doc in bpe.read_documents(os.path.join(args.corpus, "train.txt")):
        shard.extend(enc.encode(doc))
        shard.append(bpe.EOT_ID)
        docs += 1
        if len(shard) >= args.shard_tokens:
            data = xz(shard)
            if used + len(data) > budget:
                done = True
                break
            name = "train-%05d.bin.xz" % len(shards)
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(data)
            used += len(data)
            tokens += len(shard)
            shards.append({"file": name, "tokens": len(shard), "documents_through": docs})
            print("%s: %d tokens, %d bytes compressed (%.1f MB used)"
                  % (name, len(shard), len(data), used / 1e6), file=sys.stderr, flush=True)
            shard = array.array("H")
    if not done and len(shard):
        print("the whole train split fits the budget", file=sys.stderr)
    with open(os.path.join(args.corpus, "manifest.json")) as f:
        corpus_manifest = json.load(f)
    files = {name: {"bytes": os.path.getsize(os.path.join(args.out, name)),
                    "sha256": sha256(os.path.join(args.out, name))}
             for name in sorted(os.listdir(args.out))}
    manifest = {"corpus": corpus_manifest, "train_tokens": tokens, "train_shards": shards,
                "heldout_tokens": len(heldout), "heldout_documents": heldout_docs,
                "total_bytes": sum(f["bytes"] for f in files.values()), "files": files}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("carry: %d train tokens in %d shards, %d held-out tokens, %.1f MB"
          % (tokens, len(shards), len(heldout), manifest["total_bytes"] / 1e6), file=sys.stderr)


if __name__ == "__main__":
    main()
