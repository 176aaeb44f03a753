#!/usr/bin/env python3
"""PyTorch SDPA (cuDNN and flash backends, is_causal=True) on the prefill-attention benchmark's
shapes, merged with our kernels' CSV (bench/prefill_attention_bench --out) into one markdown table.

Fresh prompts only (prefix 0): SDPA's is_causal aligns the mask to the top-left corner, which is
not the chunk-after-prefix mask, so those rows carry our numbers alone. SDPA reads contiguous
[B, heads, N, head_dim] tensors. Each backend is tried with enable_gqa=True (8 KV heads) and with
the KV heads repeated to 32 outside the timed region; the faster form is kept. FLOPs are the
causal half, as in the C++ benchmark.

Usage: bench_prefill_sdpa.py --ours ours.csv --md out.md [--commit SHA]
"""
import argparse
import csv
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

Q_HEADS, KV_HEADS = 32, 8


def time_it(fn, iters, trials=5):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3 / iters)
    return statistics.median(times)


def sdpa_times(hd, batch, n, flop):
    q = torch.randn(batch, Q_HEADS, n, hd, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, KV_HEADS, n, hd, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    k_rep = k.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    v_rep = v.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    iters = max(3, int(0.2 / (flop / 3e14)))
    results = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("flash", SDPBackend.FLASH_ATTENTION)):
        best = None
        for form in ("gqa", "repeated"):
            try:
                with sdpa_kernel([backend]):
                    if form == "gqa":
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                    enable_gqa=True)
                    else:
                        fn = lambda: F.scaled_dot_product_attention(q, k_rep, v_rep,
                                                                    is_causal=True)
                    t = time_it(fn, iters)
                best = t if best is None else min(best, t)
            except RuntimeError as e:
                print(f"  {name}/{form} hd{hd} b{batch} n{n}: unavailable ({str(e)[:80]})")
        results[name] = best
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args()
    header = ""
    rows = []
    with open(args.ours) as f:
        lines = [l for l in f if l.strip()]
    header = lines[0].strip("# \n")
    floor_tflops = float(header.split("floor_tflops=")[1])
    for r in csv.DictReader(lines[1:]):
        rows.append(r)
    cases = []
    for r in rows:
        key = (int(r["head_dim"]), int(r["batch"]), int(r["prefix"]), int(r["chunk"]))
        if key not in cases:
            cases.append(key)
    out = [f"# Prefill attention on the H200 (commit {args.commit})", "",
           f"{header}. Times in us (median of 5 trials); TFLOP/s over the causal half; floor = "
           f"FLOP / {floor_tflops:.0f} TFLOP/s (dense bf16 matrix rate). 32 query heads, 8 KV "
           "heads, BF16, pages of 16 tokens for ours, contiguous tensors for SDPA.", "",
           "| head_dim | batch | prefix | chunk | tensor-core 4 warps | TFLOP/s | % floor | "
           "8 warps | CUDA-core (ours) | cuDNN | flash | ours / best SDPA |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for hd, batch, prefix, chunk in cases:
        mine = {r["kernel"]: r for r in rows
                if (int(r["head_dim"]), int(r["batch"]), int(r["prefix"]), int(r["chunk"])) ==
                (hd, batch, prefix, chunk)}
        tc = mine.get("tensor")
        cc = mine.get("cuda_core")
        t8 = mine.get("tensor_8warps")
        sd = {}
        if prefix == 0:
            sd = sdpa_times(hd, batch, chunk, float(tc["flop"]))
        best = min([t for t in sd.values() if t is not None], default=None)
        t_tc = float(tc["time_us"])
        fmt = lambda t: "-" if t is None else f"{t * 1e6:.1f}"
        ratio = "-" if best is None else f"{best * 1e6 / t_tc:.2f}x"
        line = (f"| {hd} | {batch} | {prefix} | {chunk} | {t_tc:.1f} | {float(tc['tflops']):.0f} | "
                f"{100 * float(tc['floor_frac']):.1f}% | "
                f"{'-' if t8 is None else t8['time_us']} | "
                f"{'-' if cc is None else cc['time_us']} | {fmt(sd.get('cudnn'))} | "
                f"{fmt(sd.get('flash'))} | {ratio} |")
        print(line, flush=True)
        out.append(line)
    out += ["", "ours / best SDPA > 1 means ours is faster (SDPA time over ours)."]
    with open(args.md, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
