#!/usr/bin/env python3
"""Markdown table of mpa_client bench JSON files named bench_c{concurrency}_{mode}.json.

Usage: e2e_table.py DIR  (prints the table rows; time to first token and inter-token latency
from each file, and the decode rate relative to the dense run at the same concurrency)"""
import glob
import json
import os
import re
import sys

rows = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_c*_*.json"))):
    m = re.match(r"bench_c(\d+)_(.+)\.json", os.path.basename(path))
    rows[(int(m.group(1)), m.group(2))] = json.load(open(path))
print("| streams | mode | prompt | output | TTFT p50 s | ITL mean ms | ITL p50 ms | ITL p90 ms "
      "| decode tokens/s per stream (p50) | x dense ITL p50 |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
order = ["dense", "multipole", "exact-only", "quest"]
for (c, mode), j in sorted(rows.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
    itl = j["inter_token_latency_seconds"]
    dense = rows.get((c, "dense"))
    ratio = dense["inter_token_latency_seconds"]["p50"] / itl["p50"] if dense else float("nan")
    print(f"| {c} | {mode} | {j['config']['prompt_tokens']} | {j['config']['output_tokens']} "
          f"| {j['time_to_first_token_seconds']['p50']:.2f} | {itl['mean'] * 1e3:.2f} "
          f"| {itl['p50'] * 1e3:.2f} | {itl['p90'] * 1e3:.2f} "
          f"| {j['per_stream_tokens_per_second']['p50']:.1f} | {ratio:.2f}x |")
