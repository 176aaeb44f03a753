#!/usr/bin/env python3
"""Builds the golden model fixtures under tests/fixtures/ with PyTorch + transformers.

Each fixture is a tiny random-weight causal LM of one supported architecture, saved the way
transformers saves checkpoints (config.json + model.safetensors, fp32), plus golden.json with the
outputs of the transformers implementation run in fp32 on the CPU:

  prompt_ids    the fixed prompt
  greedy_ids    the new ids of greedy generation (no EOS stop), len = num_new_tokens
  last_logits   next-token logits at the last prompt position   [vocab] fp32
  logits_after  next-token logits of prompt + greedy_ids         [vocab] fp32

and facts that help when a comparison fails (seed, RoPE inverse frequencies, the smallest gap
between the top two logits over the greedy steps).

Fixtures:
  llama3_tiny       Llama, GQA 4/2, head_dim 16, llama3 RoPE scaling; config.json rewritten into
                    the classic form (top-level rope_theta + rope_scaling) after saving.
  qwen2_tiny        Qwen2, q/k/v biases, tied embeddings, GQA 4/2; config as transformers writes.
  qwen3_tiny        Qwen3, q/k norms, head_dim 24, GQA 8/2, YaRN (original context 32, so the
                    generated tokens run past it); config as transformers writes.
  qwen3_tiny_bf16   qwen3_tiny's weights rounded to BF16 and stored as BF16; goldens computed on
                    the rounded weights upcast to fp32, so a loader's BF16 path is checked exactly.

Weights are drawn here, not by transformers' initializer: matrices N(0, (1.5 / sqrt(fan_in))^2)
so attention is neither uniform nor one-hot, the output matrix N(0, 0.5^2) so logits spread
(std ~4) and greedy steps are far from ties, biases N(0, 0.5^2), every norm weight U(0.6, 1.4).
A seed is accepted only if the greedy ids are varied and no greedy step is a near-tie (top-2 gap
>= MIN_TOP2_GAP), so an fp32 reimplementation with another summation order must reproduce the
ids exactly. The helper functions above main() use no torch, so they can be checked anywhere.

Usage: make_fixtures.py [--out DIR] [--only NAME,...]
"""

import argparse
import json
import math
import os
import shutil
import sys
import traceback

PROMPT_IDS = [1, 47, 203, 9, 311, 128, 77, 460]
NUM_NEW_TOKENS = 48
MIN_TOP2_GAP = 5e-3  # absolute logit gap; fp32 reimplementations differ by ~1e-5
MIN_DISTINCT_GREEDY = 10
MAX_SEED_TRIES = 40

# name -> (architecture class name, config kwargs without RoPE, RoPE parameters, base seed)
FIXTURES = {
    "llama3_tiny": (
        "LlamaForCausalLM",
        dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
             attention_bias=False, bos_token_id=1, eos_token_id=2),
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        1000),
    "qwen2_tiny": (
        "Qwen2ForCausalLM",
        dict(vocab_size=480, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
             bos_token_id=1, eos_token_id=2),
        {"rope_type": "default", "rope_theta": 10000.0},
        2000),
    "qwen3_tiny": (
        "Qwen3ForCausalLM",
        dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2, head_dim=24,
             max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
             attention_bias=False, use_sliding_window=False, bos_token_id=1, eos_token_id=2),
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
         "original_max_position_embeddings": 32},
        3000),
}


# ----------------------------------------------------------------------------------------------
# Pure helpers (no torch).


def expected_inv_freq(head_dim, rope):
    """RoPE inverse frequencies [head_dim / 2] and attention scaling, computed independently of
    transformers from the published formulas (float64), to confirm the fixture exercises them."""
    theta = rope["rope_theta"]
    base = [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return base, 1.0
    if kind == "llama3":
        factor = rope["factor"]
        lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        out = []
        for f in base:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        return out, 1.0
    if kind == "yarn":
        factor = rope["factor"]
        old = rope["original_max_position_embeddings"]
        beta_fast, beta_slow = rope.get("beta_fast", 32.0), rope.get("beta_slow", 1.0)

        def correction_dim(rotations):
            return head_dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
        if low == high:
            high += 0.001
        out = []
        for i, f in enumerate(base):
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            extrapolation = 1.0 - ramp
            out.append(f / factor * (1 - extrapolation) + f * extrapolation)
        return out, 0.1 * math.log(factor) + 1.0
    raise ValueError("unknown rope_type " + kind)


def to_classic_config(cfg):
    """Returns config dict `cfg` in the classic form: top-level rope_theta and a rope_scaling dict
    (no rope_parameters). Accepts either form as input."""
    cfg = dict(cfg)
    if "rope_parameters" in cfg:
        rope = dict(cfg.pop("rope_parameters"))
        cfg["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") == "default":
            cfg["rope_scaling"] = None
        else:
            cfg["rope_scaling"] = rope
    if "rope_theta" not in cfg:
        raise ValueError("config has neither rope_parameters nor rope_theta")
    return cfg


def greedy_acceptable(greedy_ids, min_gap):
    return len(set(greedy_ids)) >= MIN_DISTINCT_GREEDY and min_gap >= MIN_TOP2_GAP


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# With torch.


def make_config(transformers, arch, kwargs, rope):
    cls_name = arch.replace("ForCausalLM", "Config")
    config_cls = getattr(transformers, cls_name)
    try:
        config = config_cls(rope_parameters=dict(rope), **kwargs)
    except TypeError:  # a transformers without rope_parameters: the classic keywords
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config = config_cls(rope_theta=rope["rope_theta"],
                            rope_scaling=None if rope["rope_type"] == "default" else scaling,
                            **kwargs)
    return config


def effective_rope(config):
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        return dict(rp)
    rope = dict(getattr(config, "rope_scaling", None) or {"rope_type": "default"})
    rope["rope_theta"] = config.rope_theta
    return rope


def init_weights(torch, model, seed, tied):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.6)
            elif p.dim() == 1:  # biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.7 if tied else 1.0))
            elif "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(p.shape[1])))


def set_eager(model):
    try:
        model.set_attn_implementation("eager")
    except Exception as e:  # older transformers: the default is fine on CPU fp32
        print("  note: set_attn_implementation failed:", e)


def forward_logits(torch, model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()  # [len(ids), vocab]


def compute_golden(torch, model, prompt, num_new):
    last_logits = forward_logits(torch, model, prompt)[-1]
    seq = list(prompt)
    gaps = []
    for _ in range(num_new):
        lg = forward_logits(torch, model, seq)[-1]
        top = torch.topk(lg, 2).values
        gaps.append(float(top[0] - top[1]))
        seq.append(int(torch.argmax(lg)))
    greedy = seq[len(prompt):]
    logits_after = forward_logits(torch, model, seq)[-1]

    # transformers' own greedy generation (KV cache), which must agree with the full forwards.
    generate_ids = None
    try:
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt], dtype=torch.long),
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=num_new, do_sample=False)
        generate_ids = [int(t) for t in out[0, len(prompt):]]
    except Exception as e:
        print("  generate failed:", repr(e))
    return {
        "prompt_ids": list(prompt),
        "greedy_ids": greedy,
        "last_logits": [float(x) for x in last_logits],
        "logits_after": [float(x) for x in logits_after],
        "min_top2_gap": min(gaps),
        "generate_ids": generate_ids,
    }


def rope_facts(torch, model, config):
    """transformers' RoPE inverse frequencies and attention scaling, checked against
    expected_inv_freq. A disagreement is reported loudly but is not fatal: the goldens are what
    transformers computes, and the report says where the formulas part."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    want, want_scaling = expected_inv_freq(head_dim, effective_rope(config))
    try:
        rot = model.model.rotary_emb
        inv = [float(x) for x in rot.inv_freq.float()]
        scaling = float(getattr(rot, "attention_scaling", 1.0))
    except Exception as e:
        print("  WARNING: cannot read the rotary embedding (%r); recording the formulas" % e)
        return want, want_scaling
    err = max(abs(a - b) / b for a, b in zip(inv, want)) if len(inv) == len(want) else 1.0
    if err > 1e-6 or abs(scaling - want_scaling) > 1e-6:
        print("  WARNING: RoPE differs from the formulas: got %s / %s, want %s / %s"
              % (inv, scaling, want, want_scaling))
    return inv, scaling


def check_reload(torch, transformers, arch, directory, golden, label):
    cls = getattr(transformers, arch)
    try:
        model = cls.from_pretrained(directory, dtype=torch.float32)
    except TypeError:
        model = cls.from_pretrained(directory, torch_dtype=torch.float32)
    model.eval()
    set_eager(model)
    lg = forward_logits(torch, model, golden["prompt_ids"])[-1]
    diff = max(abs(float(a) - b) for a, b in zip(lg, golden["last_logits"]))
    print("  reload %s: rope %s, max |last_logits diff| = %g"
          % (label, effective_rope(model.config), diff))
    if diff > 1e-5:
        raise RuntimeError("%s: reloaded checkpoint gives other logits (max diff %g)" % (label, diff))


def check_safetensors(path, want_dtype):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())
        for n in names:
            t = f.get_tensor(n)
            if str(t.dtype) != want_dtype:
                raise RuntimeError("%s: %s is %s, want %s" % (path, n, t.dtype, want_dtype))
    print("  %s: %d tensors, %d bytes, all %s" % (os.path.basename(path), len(names),
                                                   os.path.getsize(path), want_dtype))
    return names


def save_model(model, directory):
    os.makedirs(directory, exist_ok=True)
    try:
        model.save_pretrained(directory, safe_serialization=True)
    except TypeError:  # transformers versions that always write safetensors
        model.save_pretrained(directory)
    for extra in os.listdir(directory):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(directory, extra))
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        raise RuntimeError("save_pretrained wrote no single model.safetensors in " + directory)


def build_fixture(torch, transformers, name, out_dir):
    arch, kwargs, rope, base_seed = FIXTURES[name]
    config = make_config(transformers, arch, kwargs, rope)
    print("  effective rope:", effective_rope(config))
    cls = getattr(transformers, arch)
    tied = kwargs["tie_word_embeddings"]
    best = None
    for attempt in range(MAX_SEED_TRIES):
        seed = base_seed + attempt
        torch.manual_seed(seed)
        model = cls(config).float().eval()
        set_eager(model)
        init_weights(torch, model, seed, tied)
        if tied and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            raise RuntimeError("lm_head is not tied to embed_tokens")
        golden = compute_golden(torch, model, PROMPT_IDS, NUM_NEW_TOKENS)
        candidates = [(model, golden)]
        ok = greedy_acceptable(golden["greedy_ids"], golden["min_top2_gap"])
        model_bf16 = golden_bf16 = None
        if name == "qwen3_tiny":
            import copy
            model_bf16 = copy.deepcopy(model)
            with torch.no_grad():
                for p in model_bf16.parameters():
                    p.copy_(p.to(torch.bfloat16).float())
            golden_bf16 = compute_golden(torch, model_bf16, PROMPT_IDS, NUM_NEW_TOKENS)
            ok = ok and greedy_acceptable(golden_bf16["greedy_ids"], golden_bf16["min_top2_gap"])
            candidates.append((model_bf16, golden_bf16))
        ok = ok and all(g["generate_ids"] is None or g["generate_ids"] == g["greedy_ids"]
                        for _, g in candidates)
        print("  seed %d: distinct greedy %d, min top-2 gap %.4g, generate agrees %s -> %s"
              % (seed, len(set(golden["greedy_ids"])), golden["min_top2_gap"],
                 golden["generate_ids"] == golden["greedy_ids"], "ok" if ok else "rejected"))
        if ok:
            best = (seed, model, golden, model_bf16, golden_bf16)
            break
    if best is None:
        raise RuntimeError("%s: no seed in %d tries gave varied, tie-free greedy ids"
                           % (name, MAX_SEED_TRIES))
    seed, model, golden, model_bf16, golden_bf16 = best

    inv_freq, attention_scaling = rope_facts(torch, model, config)
    print("  inv_freq", ["%.6g" % x for x in inv_freq], "attention_scaling", attention_scaling)
    logits = golden["last_logits"]
    mean = sum(logits) / len(logits)
    std = math.sqrt(sum((x - mean) ** 2 for x in logits) / len(logits))
    print("  last_logits std %.3f, greedy %s" % (std, golden["greedy_ids"]))

    def finish(g, dtype_name):
        g = dict(g)
        g["generated_by"] = "tools/make_fixtures.py"
        g["architecture"] = arch
        g["seed"] = seed
        g["weights_dtype"] = dtype_name
        g["rope_inv_freq"] = inv_freq
        g["rope_attention_scaling"] = attention_scaling
        g["generate_matches_full_forward"] = g.pop("generate_ids") == g["greedy_ids"]
        return g

    directory = os.path.join(out_dir, name)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    save_model(model, directory)
    check_safetensors(os.path.join(directory, "model.safetensors"), "torch.float32")
    golden = finish(golden, "F32")
    write_json(os.path.join(directory, "golden.json"), golden)
    check_reload(torch, transformers, arch, directory, golden, name)

    if name == "llama3_tiny":
        path = os.path.join(directory, "config.json")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        write_json(path, to_classic_config(cfg))
        check_reload(torch, transformers, arch, directory, golden, name + " (classic config)")

    if model_bf16 is not None:
        from safetensors.torch import load_file, save_file
        bdir = os.path.join(out_dir, name + "_bf16")
        if os.path.exists(bdir):
            shutil.rmtree(bdir)
        os.makedirs(bdir)
        shutil.copy(os.path.join(directory, "config.json"), os.path.join(bdir, "config.json"))
        tensors = load_file(os.path.join(directory, "model.safetensors"))
        bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
        save_file(bf16, os.path.join(bdir, "model.safetensors"), metadata={"format": "pt"})
        check_safetensors(os.path.join(bdir, "model.safetensors"), "torch.bfloat16")
        state = model_bf16.state_dict()
        for k, v in bf16.items():
            if not torch.equal(v.float(), state[k]):
                raise RuntimeError("bf16 file tensor %s differs from the rounded model" % k)
        golden_bf16 = finish(golden_bf16, "BF16")
        write_json(os.path.join(bdir, "golden.json"), golden_bf16)
        check_reload(torch, transformers, arch, bdir, golden_bf16, name + "_bf16")
        print("  bf16 greedy %s" % golden_bf16["greedy_ids"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "fixtures"))
    parser.add_argument("--only", default="", help="comma-separated fixture names")
    args = parser.parse_args()

    import torch
    import transformers
    import tokenizers
    import safetensors

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                "python": sys.version.split()[0]}
    print("versions:", json.dumps(versions))
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "versions.json"), versions)

    names = [n for n in args.only.split(",") if n] or list(FIXTURES)
    failed = []
    for name in names:
        print("== " + name)
        try:
            build_fixture(torch, transformers, name, args.out)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print("failed:", failed if failed else "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
