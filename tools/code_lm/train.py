#!/usr/bin/env python3
"""Trains the long-context C-source model (Qwen3 architecture, tools/code_lm/qwen3.py) on token
ids from bpe.py, in chunks that fit one 10-minute device call, and writes it in Hugging Face
layout with its learning curve and held-out perplexity at 2K vs 16K context.

Schedule. Everything is paced by wall-clock time so that a chunk ends on time whatever the GPU's
speed: progress p = seconds trained / --budget_s. The sequence length follows --stages (e.g.
"2048:0.4,4096:0.2,8192:0.15,16384:0.25": 2K tokens for the first 40% of the time, ...), with a
constant number of tokens per step (--batch_tokens). The learning rate warms up linearly over
--warmup_steps, stays at --lr, and (warmup-stable-decay) falls linearly to --lr * --min_lr_ratio
over the last --decay_fraction of the time. Pass --decay_fraction 0 for a chunk that another
will continue, and decay only in the last one.

Resume. --out DIR/model is a complete Hugging Face folder (config.json, safetensors shards under
15 MB, tokenizer.json) plus train_state.json (steps, tokens, data cursor, curve). It is written
every --save_every_s and at the end. --resume DIR continues from such a folder: weights (bf16,
upcast to fp32 master weights), step and token counts, the curve, and the data cursor of the
stage it stopped in. AdamW's moments are not kept (at 2 x 4 bytes a parameter they would not fit
the device's 64 MB carry and return limits); a resumed chunk rebuilds them during its own warmup.

Outputs (in --out): model/ (as above), curve.csv (step, tokens, seconds, seq_len, lr, train loss
averaged over the logging interval, tokens/s, held-out loss where measured, chunk), eval.json
(held-out perplexity of the same target tokens with 16K context vs in independent 2K chunks,
and by position bucket), train.log.

Data: --train_data and --heldout_data are uint16 little-endian id files (bpe.py encode), or
.xz-compressed ones; id 0 ends each document. Held-out documents are whole directories never
trained on (corpus.py).
"""

import argparse
import csv
import glob
import json
import lzma
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qwen3  # noqa: E402

EOT_ID = 0
SCRIPT_START = time.time()


def log(out, text):
    line = "[%s] %s" % (time.strftime("%H:%M:%S"), text)
    print(line, flush=True)
    if out:
        with open(os.path.join(out, "train.log"), "a") as f:
            f.write(line + "\n")


def read_ids(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        data = lzma.decompress(data)
    return np.frombuffer(data, dtype="<u2")


def load_ids(patterns):
    paths = sorted(p for pattern in patterns for p in glob.glob(pattern))
    if not paths:
        sys.exit("train.py: no files match %s" % patterns)
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:  # lzma releases the GIL
        arrays = list(pool.map(read_ids, paths))
    return np.concatenate(arrays), paths


def parse_stages(text):
    stages = []
    for item in text.split(","):
        length, fraction = item.split(":")
        stages.append((int(length), float(fraction)))
    total = sum(f for _, f in stages)
    if abs(total - 1.0) > 1e-6:
        sys.exit("train.py: --stages fractions sum to %g, not 1" % total)
    return stages


def stage_at(stages, progress):
    edge = 0.0
    for i, (length, fraction) in enumerate(stages):
        edge += fraction
        if progress < edge:
            return i
    return len(stages) - 1


def lr_at(args, step, progress):
    warm = min(1.0, (step + 1) / max(1, args.warmup_steps))
    if args.decay_fraction > 0 and progress > 1.0 - args.decay_fraction:
        left = max(0.0, (1.0 - progress) / args.decay_fraction)
        decay = args.min_lr_ratio + (1.0 - args.min_lr_ratio) * left
    else:
        decay = 1.0
    return args.lr * warm * decay


class WindowSampler:
    """Windows of the training stream, every token once per epoch, B different places per step.

    The stream is cut into blocks of the longest stage's length, visited in a seeded random
    order (a new order each epoch). A step at length T takes one window of T + 1 tokens from
    each of B open blocks (block_tokens / T windows each, in order), opening the next block of
    the order when one is used up, so a batch spans B regions and no token repeats before the
    epoch ends. A stage change closes the open blocks (at most B partly used blocks are skipped).
    Its state (epoch, position in the order, open blocks) is saved for resumption."""

    def __init__(self, num_tokens, block_tokens, seed):
        self.block = block_tokens
        self.num_blocks = (num_tokens - 1) // block_tokens
        if self.num_blocks < 1:
            sys.exit("train.py: fewer training tokens than one window of %d" % block_tokens)
        self.seed = seed
        self.epoch, self.position, self.open, self.length = 0, 0, [], None
        self._shuffle()

    def _shuffle(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.order = torch.randperm(self.num_blocks, generator=g).tolist()

    def start(self, length, saved=None):
        if self.block % length:
            sys.exit("train.py: stage length %d does not divide %d" % (length, self.block))
        self.length = length
        self.open = []
        if saved and saved.get("block") == self.block:
            if saved["epoch"] != self.epoch:
                self.epoch = saved["epoch"]
                self._shuffle()
            self.position = saved["position"]
            if saved.get("length") == length:
                self.open = [list(e) for e in saved["open"]]

    def _next_block(self):
        if self.position >= self.num_blocks:
            self.epoch, self.position = self.epoch + 1, 0
            self._shuffle()
        b = self.order[self.position]
        self.position += 1
        return b

    def take(self, count):
        while len(self.open) < count:
            self.open.append([self._next_block(), 0])
        starts = []
        for entry in self.open[:count]:
            starts.append(entry[0] * self.block + entry[1] * self.length)
            entry[1] += 1
        per_block = self.block // self.length
        self.open = [e for e in self.open if e[1] < per_block]
        return starts

    def state(self):
        return {"block": self.block, "length": self.length, "epoch": self.epoch,
                "position": self.position, "open": self.open}


def heldout_windows(ids, length, count):
    """The first length + 1 tokens of each of the first `count` held-out documents that have
    that many, as a [k, length + 1] int64 tensor (possibly k < count)."""
    ends = np.flatnonzero(ids == EOT_ID)
    begin, rows = 0, []
    for end in ends:
        if end - begin >= length + 1:
            rows.append(torch.from_numpy(ids[begin:begin + length + 1].astype(np.int64)))
            if len(rows) == count:
                break
        begin = end + 1
    return torch.stack(rows) if rows else torch.zeros(0, length + 1, dtype=torch.int64)


def token_nll(model, windows, chunk, device, autocast):
    """NLL [k, L] of targets windows[:, 1:], predicted in independent chunks of `chunk` tokens
    (chunk = L: one pass with the whole window as context)."""
    k, n = windows.shape[0], windows.shape[1] - 1
    out = torch.empty(k, n)
    with torch.no_grad(), autocast():
        for i in range(k):
            x = windows[i, :n].to(device).view(n // chunk, chunk)
            y = windows[i, 1:].to(device).view(n // chunk, chunk)
            logits = model(x).float()
            out[i] = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="none").view(-1).cpu()
    return out


def evaluate(model, heldout, args, device, autocast):
    """Perplexity of the same target tokens with long context vs in 2K chunks, and by position."""
    result = {}
    model.eval()
    for length in args.eval_lengths:
        windows = heldout_windows(heldout, length, args.eval_windows)
        if windows.shape[0] == 0:
            continue
        full = token_nll(model, windows, length, device, autocast)
        short = token_nll(model, windows, args.short_context, device, autocast)
        buckets = {}
        lo = 0
        while lo < length:
            hi = min(length, max(args.short_context, 2 * lo))
            buckets["%d-%d" % (lo, hi)] = {
                "ppl_full_context": math.exp(full[:, lo:hi].mean().item()),
                "ppl_%d_chunks" % args.short_context: math.exp(short[:, lo:hi].mean().item())}
            lo = hi
        result[str(length)] = {
            "windows": windows.shape[0],
            "tokens_scored": windows.shape[0] * length,
            "ppl_full_context": math.exp(full.mean().item()),
            "ppl_%d_chunks" % args.short_context: math.exp(short.mean().item()),
            "by_position": buckets,
        }
    model.train()
    return result


def quick_heldout_loss(model, windows, device, autocast):
    if windows.shape[0] == 0:
        return float("nan")
    model.eval()
    nll = token_nll(model, windows, windows.shape[1] - 1, device, autocast)
    model.train()
    return nll.mean().item()


def save(model, args, state, curve, tokenizer):
    directory = os.path.join(args.out, "model")
    qwen3.save_hf(model, directory, dtype_name=args.save_dtype)
    shutil.copyfile(tokenizer, os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "train_state.json"), "w") as f:
        json.dump(state, f, indent=1)
    with open(os.path.join(args.out, "curve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tokens", "seconds", "seq_len", "lr", "train_loss", "tokens_per_s",
                    "heldout_loss", "chunk"])
        w.writerows(curve)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train_data", nargs="+", required=True)
    p.add_argument("--heldout_data", nargs="+", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", default="")
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--hidden_size", type=int, default=384)
    p.add_argument("--intermediate_size", type=int, default=1152)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--rope_theta", type=float, default=1_000_000.0)
    p.add_argument("--max_position_embeddings", type=int, default=32768)
    p.add_argument("--budget_s", type=float, default=480,
                   help="seconds of training (the schedule's time base)")
    p.add_argument("--total_budget_s", type=float, default=0,
                   help="if > 0: the whole run, from the script's start, ends within this many "
                        "seconds: training gets at most this minus what loading took minus "
                        "--reserve_s (the final save and evaluation)")
    p.add_argument("--reserve_s", type=float, default=25)
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (tests)")
    p.add_argument("--progress_by_steps", action="store_true",
                   help="pace schedule and stages by steps / --max_steps instead of time")
    p.add_argument("--stages", default="2048:0.4,4096:0.2,8192:0.15,16384:0.25")
    p.add_argument("--batch_tokens", type=int, default=65536)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min_lr_ratio", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=60)
    p.add_argument("--decay_fraction", type=float, default=0.2)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--save_dtype", default="BF16", choices=["BF16", "F32"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--eval_every_s", type=float, default=60)
    p.add_argument("--save_every_s", type=float, default=120)
    p.add_argument("--eval_lengths", default="16384,32768")
    p.add_argument("--short_context", type=int, default=2048)
    p.add_argument("--eval_windows", type=int, default=24)
    args = p.parse_args()
    args.eval_lengths = [int(x) for x in args.eval_lengths.split(",") if x]
    os.makedirs(args.out, exist_ok=True)
    stages = parse_stages(args.stages)
    if args.progress_by_steps and args.max_steps <= 0:
        sys.exit("train.py: --progress_by_steps needs --max_steps")

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    use_bf16 = args.dtype == "bf16"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=device.type, enabled=False)

    t0 = time.time()
    train_ids, train_paths = load_ids(args.train_data)
    heldout, _ = load_ids(args.heldout_data)
    log(args.out, "data: %d train tokens from %d files, %d held-out tokens (%.1f s)"
        % (len(train_ids), len(train_paths), len(heldout), time.time() - t0))
    stream = torch.from_numpy(train_ids.astype(np.int16)).to(device)  # ids < 32768
    quick_windows = heldout_windows(heldout, stages[0][0], 4)

    state = {"step": 0, "tokens": 0, "seconds": 0.0, "chunks": [], "sampler": None}
    curve = []
    if args.resume:
        model = qwen3.load_hf(args.resume)
        with open(os.path.join(args.resume, "train_state.json")) as f:
            state = json.load(f)
        # The curve so far: beside the weights (unpack_result.sh) or one folder up (train.py).
        for prev_curve in (os.path.join(args.resume, "curve.csv"),
                           os.path.join(os.path.dirname(os.path.abspath(args.resume)),
                                        "curve.csv")):
            if os.path.exists(prev_curve):
                with open(prev_curve) as f:
                    curve = [row for row in csv.reader(f)][1:]
                break
        log(args.out, "resumed from %s at step %d, %d tokens"
            % (args.resume, state["step"], state["tokens"]))
    else:
        config = qwen3.Config(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                              intermediate_size=args.intermediate_size,
                              num_hidden_layers=args.layers, num_attention_heads=args.heads,
                              num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                              rope_theta=args.rope_theta,
                              max_position_embeddings=args.max_position_embeddings)
        model = qwen3.Qwen3LM(config)
        model.init_weights(args.seed)
    model.to(device)
    log(args.out, "model: %d parameters (%d without the tied embedding), config %s"
        % (model.num_parameters(),
           model.num_parameters() - model.model.embed_tokens.weight.numel(),
           json.dumps(vars(model.config))))
    decay = [p_ for p_ in model.parameters() if p_.dim() >= 2]
    no_decay = [p_ for p_ in model.parameters() if p_.dim() < 2]
    opt_kwargs = {"lr": args.lr, "betas": (0.9, 0.95), "eps": 1e-8}
    if device.type == "cuda":
        opt_kwargs["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], **opt_kwargs)
    step_fn = torch.compile(model) if args.compile else model

    if args.total_budget_s > 0:
        left = args.total_budget_s - (time.time() - SCRIPT_START) - args.reserve_s
        if left < args.budget_s:
            log(args.out, "training budget cut from %.0f s to %.0f s to end within %.0f s"
                % (args.budget_s, left, args.total_budget_s))
            args.budget_s = max(1.0, left)
    sampler = WindowSampler(len(train_ids), max(length for length, _ in stages), args.seed)
    chunk = {"start_step": state["step"], "start_tokens": state["tokens"], "args": vars(args)}
    state["chunks"].append(chunk)
    stage = -1
    start = time.time()
    last_eval = last_save = start
    # The interval's summed loss stays on the device so that steps do not wait for each other.
    interval_loss, interval_steps, interval_tokens, interval_start = 0.0, 0, 0, start
    local_step = 0
    while True:
        elapsed = time.time() - start
        if args.progress_by_steps:
            progress = local_step / args.max_steps
        else:
            progress = elapsed / args.budget_s
        if progress >= 1.0 or (args.max_steps and local_step >= args.max_steps):
            break
        s = stage_at(stages, progress)
        if s != stage:
            stage = s
            length = stages[s][0]
            sampler.start(length, state.get("sampler"))
            batch = max(1, args.batch_tokens // length)
            log(args.out, "stage %d: sequences of %d tokens, %d per step" % (s, length, batch))
        lr = lr_at(args, local_step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.tensor(sampler.take(batch), device=device)
        index = starts[:, None] + torch.arange(length + 1, device=device)[None, :]
        rows = stream[index].long()
        with autocast():
            logits = step_fn(rows[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        local_step += 1
        state["step"] += 1
        state["tokens"] += batch * length
        state["sampler"] = sampler.state()
        interval_loss = interval_loss + loss.detach()
        interval_steps += 1
        interval_tokens += batch * length
        if local_step % args.log_every == 0:
            interval_loss = float(interval_loss) / interval_steps  # waits for the device
            now = time.time()
            rate = interval_tokens / max(1e-9, now - interval_start)
            heldout_loss = ""
            if now - last_eval >= args.eval_every_s:
                heldout_loss = "%.4f" % quick_heldout_loss(model, quick_windows, device, autocast)
                last_eval = time.time()
            row = [state["step"], state["tokens"], "%.1f" % (state["seconds"] + now - start),
                   length, "%.3g" % lr, "%.4f" % interval_loss, "%.0f" % rate, heldout_loss,
                   len(state["chunks"]) - 1]
            curve.append(row)
            log(args.out, "step %d tokens %d seq %d lr %.3g loss %.4f  %.0f tok/s  held-out %s"
                % (state["step"], state["tokens"], length, lr, interval_loss, rate,
                   heldout_loss or "-"))
            interval_loss, interval_steps, interval_tokens = 0.0, 0, 0
            interval_start = time.time()
        now = time.time()
        if args.save_every_s > 0 and now - last_save >= args.save_every_s:
            state["seconds_at_save"] = state["seconds"] + now - start
            save(model, args, state, curve, args.tokenizer)
            last_save = time.time()
    state["seconds"] += time.time() - start
    chunk.update({"end_step": state["step"], "end_tokens": state["tokens"],
                  "seconds": time.time() - start})
    log(args.out, "trained %d steps, %d tokens in %.1f s (%.0f tok/s)"
        % (local_step, state["tokens"] - chunk["start_tokens"], time.time() - start,
           (state["tokens"] - chunk["start_tokens"]) / max(1e-9, time.time() - start)))
    save(model, args, state, curve, args.tokenizer)
    t = time.time()
    result = evaluate(model, heldout, args, device, autocast)
    result["train_tokens"] = state["tokens"]
    result["train_steps"] = state["step"]
    result["train_seconds"] = state["seconds"]
    result["parameters"] = model.num_parameters()
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    log(args.out, "eval (%.1f s): %s" % (time.time() - t, json.dumps(result)))


if __name__ == "__main__":
    main()
