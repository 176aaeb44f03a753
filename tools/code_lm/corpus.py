#!/usr/bin/env python3
"""Builds the C-source corpus of our long-context model from Debian's linux-source package.

Reads the kernel tarball that `apt-get install linux-source-6.1` puts under /usr/src, keeps the
.c and .h files (UTF-8, at most --max_file_bytes each, so generated register dumps stay out) and
makes one *document* per source directory: its files in name order, each preceded by a line
`// <path>` (path inside the tree). A directory larger than --max_doc_bytes is cut at file
boundaries into several documents. Files of one directory refer to each other's identifiers, so a
document holds references thousands of tokens back, which is what long context is for.

Split: a directory is held out when the first 4 bytes of sha1("heldout:" + directory) read as a
big-endian integer modulo 1000 fall below --heldout_permille. A held-out directory is never
trained on, whole. Training documents are ordered by sha1("order:" + directory + ":" + part), so
every prefix of the training stream is a spread over the whole tree.

Writes to OUT (git-ignored; rebuilt from the package):
  train.txt, heldout.txt   documents in order, each followed by one NUL byte (no source file has
                           NUL bytes; a file that has one is skipped)
  train.tsv, heldout.tsv   one line per document: directory, part, files, bytes
  manifest.json            the tarball's name, size and sha256, the settings and the totals

Usage: corpus.py [--tarball FILE] [--out DIR]
"""

import argparse
import hashlib
import json
import os
import sys
import tarfile

DEFAULT_TARBALL = "/usr/src/linux-source-6.1.tar.xz"


def heldout(directory, permille):
    h = hashlib.sha1(("heldout:" + directory).encode()).digest()
    return int.from_bytes(h[:4], "big") % 1000 < permille


def order_key(directory, part):
    return hashlib.sha1(("order:%s:%d" % (directory, part)).encode()).hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sources(tarball, max_file_bytes):
    """{directory: [(name, text)]} of the tarball's .c/.h files, paths without the top folder."""
    by_dir = {}
    skipped = {"too_large": 0, "not_utf8": 0, "nul": 0}
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith((".c", ".h")):
                continue
            if member.size > max_file_bytes:
                skipped["too_large"] += 1
                continue
            data = tar.extractfile(member).read()
            if b"\0" in data:
                skipped["nul"] += 1
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped["not_utf8"] += 1
                continue
            path = member.name.split("/", 1)[1]
            directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
            by_dir.setdefault(directory, []).append((path, text))
    return by_dir, skipped


def make_documents(by_dir, max_doc_bytes):
    """[(directory, part, files, text)] with each directory's files in name order."""
    docs = []
    for directory in sorted(by_dir):
        part, files, pieces, size = 0, 0, [], 0
        for path, text in sorted(by_dir[directory]):
            piece = "// " + path + "\n" + text
            if not piece.endswith("\n"):
                piece += "\n"
            n = len(piece.encode("utf-8"))
            if pieces and size + n > max_doc_bytes:
                docs.append((directory, part, files, "".join(pieces)))
                part, files, pieces, size = part + 1, 0, [], 0
            pieces.append(piece)
            files += 1
            size += n
        if pieces:
            docs.append((directory, part, files, "".join(pieces)))
    return docs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tarball", default=DEFAULT_TARBALL)
    p.add_argument("--out", default="corpus")
    p.add_argument("--max_file_bytes", type=int, default=256 * 1024)
    p.add_argument("--max_doc_bytes", type=int, default=512 * 1024)
    p.add_argument("--heldout_permille", type=int, default=40)
    args = p.parse_args()
    if not os.path.isfile(args.tarball):
        sys.exit("corpus.py: %s not found (apt-get install linux-source-6.1)" % args.tarball)
    os.makedirs(args.out, exist_ok=True)

    by_dir, skipped = read_sources(args.tarball, args.max_file_bytes)
    docs = make_documents(by_dir, args.max_doc_bytes)
    splits = {"train": [], "heldout": []}
    for doc in docs:
        splits["heldout" if heldout(doc[0], args.heldout_permille) else "train"].append(doc)
    splits["train"].sort(key=lambda d: order_key(d[0], d[1]))
    totals = {}
    for name, split in splits.items():
        with open(os.path.join(args.out, name + ".txt"), "wb") as text, \
                open(os.path.join(args.out, name + ".tsv"), "w", encoding="utf-8") as index:
            nbytes = 0
            for directory, part, files, body in split:
                data = body.encode("utf-8")
                text.write(data + b"\0")
                index.write("%s\t%d\t%d\t%d\n" % (directory, part, files, len(data)))
                nbytes += len(data)
        totals[name] = {"documents": len(split), "bytes": nbytes,
                        "directories": len({d[0] for d in split}),
                        "sha256": file_sha256(os.path.join(args.out, name + ".txt"))}
    manifest = {
        "tarball": os.path.basename(args.tarball),
        "tarball_bytes": os.path.getsize(args.tarball),
        "tarball_sha256": file_sha256(args.tarball),
        "max_file_bytes": args.max_file_bytes,
        "max_doc_bytes": args.max_doc_bytes,
        "heldout_permille": args.heldout_permille,
        "skipped_files": skipped,
        "splits": totals,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
