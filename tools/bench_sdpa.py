#!/usr/bin/env python3
"""PyTorch SDPA (cuDNN and flash backends) on the decode-attention benchmark's shapes, merged with
our kernel's CSV (bench/decode_attention_bench --out) into one markdown table.

Same shapes as the C++ benchmark: one query token per sequence, 32 query heads, 8 KV heads,
head_dim 128, BF16, contexts 8K/32K/128K, batch 1/4/16. SDPA reads a contiguous (unpaged) cache.
Each backend is tried in two forms and the faster is kept:
  gqa:  q [B, 32, 1, 128] with enable_gqa=True;
  rows: the 4 query heads of a KV head as 4 query rows, q [B, 8, 4, 128], no mask (the same
        arithmetic, and no KV head is ever repeated in memory).

Usage: bench_sdpa.py --ours ours.csv --md out.md [--commit SHA]
"""
import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
SHAPES = [(c, b) for c in (8192, 32768, 131072) for b in (1, 4, 16)]


def time_it(fn, iters, trials=7):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start.record()
        for i in range(iters):
            fn(i)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3 / iters)
    return statistics.median(times)


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.int16, device="cuda")  # 2 GiB
    b = torch.empty_like(a)
    t = time_it(lambda i: b.copy_(a), 10, 5)
    return 2 * a.numel() * 2 / t


def sdpa_times(context, batch, l2_bytes):
    kv_bytes = 2 * batch * KV_HEADS * context * HEAD_DIM * 2
    copies = max(1, math.ceil(4 * l2_bytes / kv_bytes))
    ks = [torch.randn(batch, KV_HEADS, context, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
          for _ in range(copies)]
    vs = [torch.randn_like(ks[0]) for _ in range(copies)]
    q = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    q_rows = q.view(batch, KV_HEADS, Q_HEADS // KV_HEADS, HEAD_DIM)
    iters = min(2000, max(20, int(2e9 / kv_bytes)))
    results = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        best = None
        for form in ("gqa", "rows"):
            def run(i, form=form):
                k, v = ks[i % copies], vs[i % copies]
                if form == "gqa":
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                return F.scaled_dot_product_attention(q_rows, k, v)
            try:
                with sdpa_kernel(backend):
                    out = run(0)
                    if form == "rows":  # same numbers as the gqa form through the math backend
                        with sdpa_kernel(SDPBackend.MATH):
                            ref = F.scaled_dot_product_attention(q, ks[0], vs[0], enable_gqa=True)
                        err = (out.float().reshape(ref.shape) - ref.float()).norm() / ref.float().norm()
                        assert err < 2e-2, f"rows form differs: {err}"
                    t = time_it(run, iters)
            except Exception as e:  # a backend may not take a form; record why
                print(f"  {name}/{form} at {context}x{batch}: unavailable ({str(e).splitlines()[0][:100]})")
                continue
            if best is None or t < best[0]:
                best = (t, form)
        results[name] = best
    del ks, vs
    torch.cuda.empty_cache()
    return kv_bytes, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args()

    ours, header = {}, ""
    with open(args.ours) as f:
        for line in f:
            if line.startswith("#"):
                header = line[1:].strip()
                continue
            if line.startswith("context"):
                continue
            c, b, variant, splits, kvb, t_us, gbs, floor_us, frac = line.strip().split(",")
            if variant == "default":
                ours[(int(c), int(b))] = (float(t_us), float(gbs), float(floor_us), float(frac), int(splits))

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 60 << 20)
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, {props.name}, copy bandwidth {bw * 1e-9:.0f} GB/s")
    rows = []
    for context, batch in SHAPES:
        kv_bytes, r = sdpa_times(context, batch, l2)
        rows.append((context, batch, kv_bytes, r))
        fmt = lambda x: "n/a" if x is None else f"{x[0] * 1e6:.1f} ({x[1]})"
        print(f"{context:7d} {batch:3d}  cudnn {fmt(r['cudnn'])}  flash {fmt(r['flash'])}")

    lines = [
        "# Decode attention on the H200: our split-KV paged kernel vs PyTorch SDPA and the byte floor",
        "",
        f"- commit: `{args.commit}`",
        f"- device: {props.name}; our benchmark: {header}; PyTorch's copy: {bw * 1e-9:.0f} GB/s",
        f"- torch {torch.__version__}; shape: 32 query heads, 8 KV heads, head_dim 128, BF16, one query token per sequence",
        "- ours: `decode_attention_bench` (paged cache, pages of 16 tokens in shuffled order); SDPA: contiguous cache,",
        "  the faster of two forms per backend (gqa = enable_gqa, rows = the group's 4 heads as 4 query rows)",
        "- floor = KV bytes / copy bandwidth (read + write) measured in the same run; times are medians of 7 trials",
        "  of back-to-back calls over several caches in rotation (so no shape is served from L2)",
        "- target (32K and 128K, batch >= 4): speed >= 0.9x the faster SDPA, and >= 85% of floor",
        "",
        "| context | batch | KV MB | ours us | ours GB/s | % of floor | splits | cuDNN us | flash us | faster SDPA / ours | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for context, batch, kv_bytes, r in rows:
        o = ours.get((context, batch))
        cud, fla = r["cudnn"], r["flash"]
        best = min([x[0] for x in (cud, fla) if x is not None], default=None)
        cell = lambda x: "n/a" if x is None else f"{x[0] * 1e6:.1f} ({x[1]})"
        if o is None:
            lines.append(f"| {context} | {batch} | {kv_bytes / 1e6:.0f} | missing | | | | {cell(cud)} | {cell(fla)} | | |")
            continue
        ratio = best / (o[0] * 1e-6) if best else float("nan")
        target = ""
        if context >= 32768 and batch >= 4:
            ok = ratio >= 0.9 and o[3] >= 0.85
            target = "met" if ok else "MISSED"
        lines.append(
            f"| {context} | {batch} | {kv_bytes / 1e6:.0f} | {o[0]:.1f} | {o[1]:.0f} | {100 * o[3]:.1f}% | {o[4]} "
            f"| {cell(cud)} | {cell(fla)} | {ratio:.2f}x | {target} |")
    with open(args.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
