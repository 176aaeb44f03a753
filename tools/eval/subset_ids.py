#!/usr/bin/env python3
"""Writes the documents mpa_eval would score from a token-id file, and nothing else.

mpa_eval scores, at each context length L, the first --docs_per_context documents with at least
L + 1 tokens, each cut to L + 1 tokens. This keeps those documents (in their order, each cut to the
longest length it is scored at) so a run elsewhere reads the same tokens from a file of a few
hundred KB instead of the whole held-out split.

Usage: subset_ids.py IN.bin OUT.bin --separator 0 --contexts 8192,16384,32768 --docs_per_context 4
Files: uint16 little-endian ids, documents ended by the separator id.
"""
import argparse
import array
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--separator", type=int, required=True)
    ap.add_argument("--contexts", default="8192,16384,32768")
    ap.add_argument("--docs_per_context", type=int, default=4)
    args = ap.parse_args()
    ids = array.array("H")
    with open(args.src, "rb") as f:
        ids.frombytes(f.read())
    if sys.byteorder != "little":
        ids.byteswap()
    docs, start = [], 0
    for i, x in enumerate(ids):
        if x == args.separator:
            docs.append((start, i))
            start = i + 1
    if start < len(ids):
        docs.append((start, len(ids)))
    keep = {}  # document index -> tokens kept
    for L in (int(c) for c in args.contexts.split(",") if c):
        taken = 0
        for d, (b, e) in enumerate(docs):
            if taken == args.docs_per_context:
                break
            if e - b >= L + 1:
                keep[d] = max(keep.get(d, 0), L + 1)
                taken += 1
    out = array.array("H")
    for d in sorted(keep):
        b, _ = docs[d]
        out.extend(ids[b:b + keep[d]])
        out.append(args.separator)
    if sys.byteorder != "little":
        out.byteswap()
    with open(args.dst, "wb") as f:
        f.write(out.tobytes())
    print(f"{len(keep)} documents ({', '.join(f'#{d}: {keep[d]}' for d in sorted(keep))}), "
          f"{len(out)} ids -> {args.dst}")


if __name__ == "__main__":
    main()
