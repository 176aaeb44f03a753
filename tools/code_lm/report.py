#!/usr/bin/env python3
"""Writes the training report (markdown) of a model folder that unpack_result.sh made: settings,
the learning curve (loss vs tokens, per chunk), held-out perplexity with long vs 2K context and
by position, and the golden/tokenizer cross-checks.

Usage: report.py MODEL_DIR [--out bench/results/linux_c_16k_training.md] [--commit HASH]
"""

import argparse
import csv
import json
import os


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", default="")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--every", type=int, default=10, help="curve rows: one in this many")
    args = p.parse_args()
    d = args.model
    with open(os.path.join(d, "train_state.json")) as f:
        state = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    ev = {}
    if os.path.exists(os.path.join(d, "eval.json")):
        with open(os.path.join(d, "eval.json")) as f:
            ev = json.load(f)
    golden = {}
    if os.path.exists(os.path.join(d, "golden.json")):
        with open(os.path.join(d, "golden.json")) as f:
            golden = json.load(f)
    env = ""
    if os.path.exists(os.path.join(d, "env.txt")):
        with open(os.path.join(d, "env.txt")) as f:
            env = " ".join(line.strip() for line in f if line.strip())
    rows = []
    if os.path.exists(os.path.join(d, "curve.csv")):
        with open(os.path.join(d, "curve.csv")) as f:
            rows = list(csv.DictReader(f))

    s = ["# The long-context C-source model: training\n",
         "Commit `%s`. Machine: %s.\n" % (args.commit, env or "unknown"),
         "Model: Qwen3, %d layers, hidden %d, %d query / %d KV heads of %d, FFN %d, vocab %d, "
         "tied embeddings, RoPE theta %g, max positions %d; %s parameters.\n"
         % (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["intermediate_size"],
            config["vocab_size"], config["rope_parameters"]["rope_theta"],
            config["max_position_embeddings"], ev.get("parameters", "?")),
         "Trained %d steps, %d tokens in %.0f s over %d chunk(s).\n"
         % (state["step"], state["tokens"], state["seconds"], len(state["chunks"]))]
    for i, c in enumerate(state["chunks"]):
        a = c["args"]
        s.append("- chunk %d: steps %d-%s, %.0f s, stages `%s`, %d tokens/step, lr %g "
                 "(warmup %d steps, decay over the last %g of the time), weight decay %g, "
                 "resume `%s`\n"
                 % (i, c["start_step"], c.get("end_step", "?"), c.get("seconds", 0), a["stages"],
                    a["batch_tokens"], a["lr"], a["warmup_steps"], a["decay_fraction"],
                    a["weight_decay"], a["resume"] or "-"))
    for length, r in sorted(((k, v) for k, v in ev.items() if isinstance(v, dict)),
                            key=lambda kv: int(kv[0])):
        short = [k for k in r if k.startswith("ppl_") and k.endswith("_chunks")][0]
        s.append("\n## Held-out perplexity, windows of %s tokens\n\n" % length)
        s.append("%d windows (the first %s tokens of each held-out document that long), %d "
                 "target tokens each way: with the whole window as context %.3f, in independent "
                 "%s-token chunks %.3f.\n\n"
                 % (r["windows"], length, r["tokens_scored"], r["ppl_full_context"],
                    short.split("_")[1], r[short]))
        s.append("| positions | full context | %s-token chunks |\n|---|---|---|\n"
                 % short.split("_")[1])
        for bucket, b in r["by_position"].items():
            s.append("| %s | %.3f | %.3f |\n" % (bucket, b["ppl_full_context"], b[short]))
    if golden:
        s.append("\n## Cross-checks\n\n")
        s.append("- golden logits by %s (%s)\n" % (golden.get("impl"),
                                                   json.dumps(golden.get("versions", {}))))
        if "ours_vs_transformers_rel_l2" in golden:
            s.append("- tools/code_lm/qwen3.py vs transformers, last prompt logits: rel L2 %.3g\n"
                     % golden["ours_vs_transformers_rel_l2"])
        if "tokenizer_check" in golden:
            s.append("- Hugging Face tokenizers on the held-out sample: %s\n"
                     % json.dumps(golden["tokenizer_check"]))
    if rows:
        s.append("\n## Learning curve\n\n| step | tokens | seconds | seq len | lr | train loss | "
                 "tokens/s | held-out loss |\n|---|---|---|---|---|---|---|---|\n")
        for i, r in enumerate(rows):
            if i % args.every == 0 or i == len(rows) - 1 or r.get("heldout_loss"):
                s.append("| %s | %s | %s | %s | %s | %s | %s | %s |\n"
                         % (r["step"], r["tokens"], r["seconds"], r["seq_len"], r["lr"],
                            r["train_loss"], r["tokens_per_s"], r.get("heldout_loss") or ""))
    text = "".join(s)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
