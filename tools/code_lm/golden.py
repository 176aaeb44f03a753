#!/usr/bin/env python3
"""Golden outputs of a trained model folder, in the format of tests/fixtures/*/golden.json (see
tests/fixtures/README.md), for tests/model/cpu/code_model_golden_test.cc:

  prompt_ids    the first --prompt_tokens ids of --ids (the committed held-out sample)
  greedy_ids    --new_tokens ids of greedy generation (no EOS stop)
  last_logits   fp32 next-token logits at the last prompt position [vocab]
  logits_after  fp32 next-token logits of prompt + greedy_ids [vocab]
  top2_gaps     the gap between the two largest logits at each greedy step (a step whose gap
                is within rounding may legitimately differ between implementations)

--impl transformers (the reference; on the GPU machine) loads the folder with
transformers.AutoModelForCausalLM; --impl ours uses tools/code_lm/qwen3.py (for the CPU pipeline
test here, where transformers is not installed). Both run in fp32 on the CPU, on the stored
(BF16) weights upcast to fp32, so an fp32 reimplementation must match to rounding.

With --text and --tokenizer_check, also encodes --text with Hugging Face `tokenizers` (when
importable) and records whether it gives exactly --ids (our bpe.py's ids, which the C++
tokenizer test also checks) and decodes back to the text.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qwen3  # noqa: E402


def load(impl, directory):
    if impl == "transformers":
        import transformers
        model = transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                                  dtype=torch.float32)
        model.eval()

        def logits(ids):
            with torch.no_grad():
                return model(torch.tensor([ids])).logits[0, -1].float()

        return logits, {"transformers": transformers.__version__}
    model = qwen3.load_hf(directory)
    model.eval()

    def logits(ids):
        with torch.no_grad():
            return model(torch.tensor([ids]))[0, -1].float()

    return logits, {}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="uint16 id file (the held-out sample's ids)")
    p.add_argument("--impl", choices=["transformers", "ours"], default="transformers")
    p.add_argument("--prompt_tokens", type=int, default=1024)
    p.add_argument("--new_tokens", type=int, default=24)
    p.add_argument("--text", default="", help="the held-out sample's text (tokenizer check)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    ids = np.fromfile(args.ids, dtype="<u2").astype(np.int64).tolist()
    prompt = ids[:args.prompt_tokens]
    logits_of, versions = load(args.impl, args.model)
    last = logits_of(prompt)
    seq, greedy, gaps = list(prompt), [], []
    logits = last
    for _ in range(args.new_tokens):
        top2 = torch.topk(logits, 2).values
        gaps.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        greedy.append(nxt)
        seq.append(nxt)
        logits = logits_of(seq)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    golden = {
        "impl": args.impl,
        "versions": dict(versions, torch=torch.__version__),
        "weights_dtype": "BF16" if config.get("dtype", "") == "bfloat16" else "F32",
        "prompt_ids": prompt,
        "greedy_ids": greedy,
        "top2_gaps": gaps,
        "min_top2_gap": min(gaps) if gaps else None,
        "last_logits": [float(x) for x in last],
        "logits_after": [float(x) for x in logits],
    }
    if args.impl == "transformers":
        # Our own PyTorch model (the one train.py trains) on the same folder, as a cross-check.
        ours, _ = load("ours", args.model)
        ref = torch.tensor(golden["last_logits"])
        golden["ours_vs_transformers_rel_l2"] = float(
            (ours(prompt) - ref).norm() / ref.norm())
        print("ours vs transformers, last prompt logits: rel L2 %.3g"
              % golden["ours_vs_transformers_rel_l2"])
    if args.text:
        check = {"text_bytes": os.path.getsize(args.text), "ids": len(ids)}
        try:
            import tokenizers
            tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
            hf_ids = tok.encode(text, add_special_tokens=False).ids
            check["tokenizers"] = tokenizers.__version__
            check["hf_ids_equal_ours"] = hf_ids == ids
            check["hf_decode_equals_text"] = tok.decode(hf_ids, skip_special_tokens=False) == text
            if hf_ids != ids:
                first = next((i for i, (a, b) in enumerate(zip(hf_ids, ids)) if a != b),
                             min(len(hf_ids), len(ids)))
                check["first_difference"] = first
        except ImportError:
            check["tokenizers"] = None
        golden["tokenizer_check"] = check
        print("tokenizer check: %s" % json.dumps(check))
    with open(args.out, "w") as f:
        json.dump(golden, f)
    print("wrote %s: greedy %s, min top-2 gap %.4g" % (args.out, greedy, min(gaps)))


if __name__ == "__main__":
    main()
