#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/qwen3_golden.json: how the `tokenizers` library encodes a set
of awkward texts with Qwen3's tokenizer.json (add_special_tokens=False), and how it decodes the
ids back (skip_special_tokens=False). The C++ tokenizer must reproduce both exactly.

Note on normalization: Qwen3's tokenizer.json has an NFC normalizer, so a text written with
combining marks encodes like its precomposed form, and `decoded` is then the NFC text, not the
input; the file records what the library produces, "decoded_equals_text" says which case it is.

Usage: make_tokenizer_golden.py --tokenizer PATH/tokenizer.json [--out FILE]
"""

import argparse
import json
import os
import sys

TEXTS = [
    # English prose
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst "
    "of times; the age of wisdom, the age of foolishness.",
    "Hello world",
    " Hello world",
    "HELLO, World! hello... WORLD?",
    # contractions
    "don't, I'll, we're, they've, she's, I'm, he'd, it'S, WE'RE, y'all",
    # punctuation runs
    "Wait!!! What??? ... --- ;;; :) (^_^) [[x]] {{y}} <a href=\"#\">link</a> ~~~ ***",
    "a,b;c:d!e?f.g-h_i/j\\k|l@m#n$o%p^q&r*s(t)u[v]w{x}y<z>",
    # Python code with whitespace runs, tabs, newlines, trailing spaces
    "def f(x):\n    if x > 0:\n        return x * 2\n    return -x\n",
    "class A:\n\tdef g(self):\n\t\tpass  \n\n\n# comment   \nprint(  'hi'  )\t\n",
    "for i in range(10):\n    print(i)   \n\n\n\n    \n",
    "    leading spaces and trailing spaces    ",
    "\n\n\n",
    "    ",
    " ",
    "\t\t\tindented\ttabs\t",
    "line one\r\nline two\r\n\r\nline three\rend",
    "x  =  1\n\ny   =    2     \n",
    # digits and numbers
    "12345 3.14159 2026-11-29",
    "0 1 12 123 1234 12345 123456 1234567890",
    "$1,234.56 and 99.9% of 1e-10; v2.0.1 at 10:30pm; +49 (0)30 1234567",
    # CJK
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u6211\u4eec\u4f7f\u7528\u591a\u6781\u6ce8\u610f\u529b\u6765\u52a0\u901f\u957f\u4e0a\u4e0b"
    "\u6587\u63a8\u7406\u3002",
    "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u30ab\u30bf\u30ab\u30ca\u3068"
    "\u3072\u3089\u304c\u306a\u3068\u6f22\u5b57\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\ub3c4 \uc788\uc2b5\ub2c8\ub2e4.",
    "mixed English\u548c\u4e2d\u6587 text \u65e5\u672c\u8a9e123",
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    "I love it \U0001F600\U0001F44D\U0001F3FD!",
    "family: \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 and "
    "\U0001F3F3\uFE0F\u200D\U0001F308",
    "flags: \U0001F1FA\U0001F1F8 \U0001F1EF\U0001F1F5 \U0001F1E9\U0001F1EA",
    "\u2764\uFE0F \u263A \u2705 \U0001F9D1\u200D\U0001F4BB",
    # accented Latin, precomposed and combining-mark forms
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00fcber Stra\u00dfe "
    "\u0153uvre \u00f1and\u00fa",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m",
    "\u1e9b\u0323 \u0041\u030a \u212b \ufb01 \u2126",
    # special tokens inside text
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|><|endoftext|>",
    "<think>\nLet me think.\n</think>\n\nThe answer is 42.",
    "not special: <|im_start and im_end|> <| |>",
    # other scripts and symbols
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! "
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5 "
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0; \u222b\u2080\u00b9 f(x)dx \u2248 \u03c0/4 "
    "\u2192 \u221e",
    "",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="Qwen3 tokenizer.json")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "fixtures", "tokenizer",
                                                      "qwen3_golden.json"))
    args = parser.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    entries = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        entries.append({"text": text, "ids": ids, "decoded": decoded,
                        "decoded_equals_text": decoded == text})
        print("%4d ids  decoded==text %-5s  %r" % (len(ids), decoded == text, text[:60]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"source": "tokenizers %s" % tokenizers.__version__,
                   "generated_by": "tools/make_tokenizer_golden.py",
                   "add_special_tokens": False, "skip_special_tokens": False,
                   "texts": entries}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %d texts to %s" % (len(entries), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
