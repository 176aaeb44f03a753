#!/usr/bin/env python3
"""Writes a Qwen3 checkpoint of a real model's shape with seeded random weights (Hugging Face
layout: config.json, safetensors shards, tokenizer files), for end-to-end benchmarks of the server
at that shape where no real weights can be downloaded. Needs torch and transformers (the GPU
machine has them); the weights are drawn on the GPU when there is one.

Usage: make_random_qwen3.py OUT_DIR --tokenizer_dir DIR [--shape 8b] [--seed 0]
  --tokenizer_dir: a folder with Qwen3's tokenizer.json (and tokenizer_config.json), copied in.
"""
import argparse
import json
import os
import shutil
import time

import torch
import transformers

SHAPES = {
    # Qwen3-8B's config.json values that shape the computation.
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer_dir", required=True)
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_position_embeddings", type=int, default=40960)
    args = ap.parse_args()
    t0 = time.time()
    config = transformers.Qwen3Config(
        vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=args.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16",
        **SHAPES[args.shape])
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(config)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="4GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer_dir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    print(json.dumps({"out": args.out, "shape": args.shape, "parameters": params,
                      "seed": args.seed, "seconds": round(time.time() - t0, 1),
                      "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
