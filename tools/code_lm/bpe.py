#!/usr/bin/env python3
"""Byte-level BPE for the C-source model: training, encoding, and the tokenizer.json writer.

The tokenizer is GPT-2-style byte-level BPE behind a pre-tokenizer made for C:

  pre-tokenizer  Split on PATTERN (isolated pieces), then ByteLevel (no prefix space, no regex)
  model          BPE over the 256 byte symbols; id 0 is <|endoftext|> (document separator,
                 special), ids 1..256 the bytes 0..255, then one id per merge in merge order
  decoder        ByteLevel

PATTERN keeps an identifier (letters, digits, '_') whole after at most one space or tab, a run of
punctuation likewise, a line break with the next line's indentation as one piece, and any other
whitespace run as one piece. Python's `regex` module runs it here with \\s spelled out as Unicode
White_Space (what Hugging Face's Oniguruma and our C++ tokenizer use), so the ids written here
are the ids the C++ tokenizer and Hugging Face `tokenizers` give (tests/model/text/code_tokenizer_test.cc
and the device run check that).

Training counts the pre-tokenized pieces of a sample of the train split, then merges the most
frequent adjacent pair until the vocabulary is full (ties: the pair whose symbols sort first as
byte strings), updating counts incrementally.

Usage:
  bpe.py train  --text corpus/train.txt --sample_mb 64 --vocab 8192 --out corpus/tokenizer.json
  bpe.py encode --tokenizer corpus/tokenizer.json --text corpus/heldout.txt --out heldout.bin
             [--max_tokens N] [--no_eot]
             (uint16 ids; each NUL-separated document ends with id 0 unless --no_eot)
"""

import argparse
import heapq
import json
import sys

import regex

EOT = "<|endoftext|>"
EOT_ID = 0
FIRST_BYTE_ID = 1

# As written into tokenizer.json (Oniguruma syntax; our C++ tokenizer translates it for RE2).
PATTERN = r"[ \t]?[\p{L}\p{N}_]+|[ \t]?[^\s\p{L}\p{N}_]+|\r?\n[ \t]*|\s+"
_WHITE_SPACE = (r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000")
PYTHON_PATTERN = regex.compile(PATTERN.replace(r"[^\s", "[^" + _WHITE_SPACE)
                               .replace(r"\s+", "[" + _WHITE_SPACE + "]+"))


def byte_alphabet():
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other
    68 bytes take code points 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHAR = byte_alphabet()


def pieces(text):
    return PYTHON_PATTERN.findall(text)


def count_pieces(text):
    counts = {}
    for p in pieces(text):
        counts[p] = counts.get(p, 0) + 1
    return counts


def train(counts, vocab_size, log=sys.stderr):
    """Merges [(left bytes, right bytes)] learned from {piece: count}."""
    num_tokens = vocab_size - FIRST_BYTE_ID  # byte symbols and merged symbols
    symbols = {i: bytes([i]) for i in range(256)}  # symbol id -> bytes
    words = [list(w.encode("utf-8")) for w in counts]
    freq = list(counts.values())
    pair_count = {}
    where = {}  # pair -> set of word indices holding it
    for wi, w in enumerate(words):
        f = freq[wi]
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] = pair_count.get((a, b), 0) + f
            where.setdefault((a, b), set()).add(wi)
    heap = [(-c, symbols[a], symbols[b], (a, b)) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    distinct = {bytes([i]) for i in range(256)}  # two merges may spell the same bytes
    while len(distinct) < num_tokens and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale entry
        a, b = pair
        new = 256 + len(merges)
        symbols[new] = symbols[a] + symbols[b]
        merges.append((symbols[a], symbols[b]))
        distinct.add(symbols[new])
        changed = set()
        for wi in where.pop(pair, ()):
            w, f = words[wi], freq[wi]
            i, out = 0, []
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                changed.add(p)
            for p in zip(out, out[1:]):
                pair_count[p] = pair_count.get(p, 0) + f
                where.setdefault(p, set()).add(wi)
                changed.add(p)
            words[wi] = out
        pair_count.pop(pair, None)
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0 and p != pair:
                heapq.heappush(heap, (-c, symbols[p[0]], symbols[p[1]], p))
        if len(merges) % 1000 == 0:
            print("merges: %d (last count %d)" % (len(merges), -neg), file=log, flush=True)
    return merges


def to_chars(data):
    return "".join(BYTE_CHAR[b] for b in data)


def tokenizer_json(merges):
    vocab = {EOT: EOT_ID}
    for b in range(256):
        vocab[BYTE_CHAR[b]] = FIRST_BYTE_ID + b
    merge_list = []
    for left, right in merges:
        merged = to_chars(left + right)
        if merged not in vocab:  # another merge may have spelled it already
            vocab[merged] = len(vocab)
        merge_list.append([to_chars(left), to_chars(right)])
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": EOT_ID, "content": EOT, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merge_list},
    }


class Encoder:
    """Encodes text with a tokenizer.json written by tokenizer_json()."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
        self.vocab = tok["model"]["vocab"]
        self.id_bytes = {}
        char_byte = {c: b for b, c in BYTE_CHAR.items()}
        for token, i in self.vocab.items():
            if i != EOT_ID:
                self.id_bytes[i] = bytes(char_byte[c] for c in token)
        self.rank = {}
        for r, (left, right) in enumerate(tok["model"]["merges"]):
            self.rank[(self.vocab[left], self.vocab[right])] = (r, self.vocab[left + right])
        self.cache = {}

    def encode_piece(self, piece):
        ids = self.cache.get(piece)
        if ids is not None:
            return ids
        ids = [FIRST_BYTE_ID + b for b in piece.encode("utf-8")]
        rank = self.rank
        while len(ids) > 1:
            best = None
            for i in range(len(ids) - 1):
                r = rank.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r[0] < best[0]):
                    best = r
                    pair = (ids[i], ids[i + 1])
            if best is None:
                break
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    out.append(best[1])
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self.cache) < 2_000_000:
            self.cache[piece] = ids
        return ids

    def encode(self, text):
        """Ids of text without special tokens (text must not hold <|endoftext|>)."""
        out = []
        for p in pieces(text):
            out.extend(self.encode_piece(p))
        return out

    def decode(self, ids):
        return b"".join(self.id_bytes[i] for i in ids if i != EOT_ID).decode("utf-8")


def read_documents(path, max_bytes=None):
    """Yields the NUL-terminated documents of a corpus.py text file, as str."""
    with open(path, "rb") as f:
        data = f.read() if max_bytes is None else f.read(max_bytes)
    docs = data.split(b"\0")
    if max_bytes is not None and len(data) == max_bytes:
        docs = docs[:-1]  # the last one is cut
    for d in docs:
        if d:
            yield d.decode("utf-8")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--text", required=True)
    t.add_argument("--sample_mb", type=float, default=64)
    t.add_argument("--vocab", type=int, default=8192)
    t.add_argument("--out", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--text", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--max_tokens", type=int, default=0)
    e.add_argument("--no_eot", action="store_true", help="no id 0 after each document")
    args = p.parse_args()
    if args.command == "train":
        counts = {}
        for doc in read_documents(args.text, int(args.sample_mb * (1 << 20))):
            for piece, c in count_pieces(doc).items():
                counts[piece] = counts.get(piece, 0) + c
        print("distinct pieces: %d" % len(counts), file=sys.stderr)
        merges = train(counts, args.vocab)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(merges), f, ensure_ascii=False, indent=1)
        print("wrote %s (%d merges)" % (args.out, len(merges)), file=sys.stderr)
    else:
        import array
        enc = Encoder(args.tokenizer)
        out = array.array("H")
        nbytes = 0
        for doc in read_documents(args.text):
            out.extend(enc.encode(doc))
            if not args.no_eot:
                out.append(EOT_ID)
            nbytes += len(doc.encode("utf-8"))
            if args.max_tokens and len(out) >= args.max_tokens:
                del out[args.max_tokens:]
                break
        if sys.byteorder != "little":
            out.byteswap()
        with open(args.out, "wb") as f:
            out.tofile(f)
        print("wrote %s: %d tokens from %d bytes (%.2f bytes/token)"
              % (args.out, len(out), nbytes, nbytes / max(1, len(out))), file=sys.stderr)


if __name__ == "__main__":
    main()
