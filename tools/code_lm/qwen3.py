#!/usr/bin/env python3
"""The Qwen3 architecture in plain PyTorch, with parameter names as Hugging Face's
Qwen3ForCausalLM names them, and the Hugging Face folder layout (config.json + safetensors,
sharded when large) written and read without the transformers or safetensors packages, so the
same code trains on the GPU machine (torch 2.x) and runs its tests here (Debian's torch 1.13).

What makes it Qwen3 (as transformers and our C++ engine implement it): RMSNorm before attention
and MLP, RMSNorm of every query and key head (q_norm, k_norm, over head_dim) before RoPE, RoPE in
the rotate-half layout with inverse frequencies theta^(-2i/head_dim), grouped-query attention,
SiLU-gated MLP, no biases, final RMSNorm; tied input and output embeddings here.
"""

import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, vocab_size=8192, hidden_size=384, intermediate_size=1152,
                 num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                 rope_theta=1_000_000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 bos_token_id=0, eos_token_id=0):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def hf_json(self, dtype="bfloat16"):
        """config.json as transformers 5 writes a Qwen3 config (rope_parameters form)."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": dtype,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": ["full_attention"] * self.num_hidden_layers,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": None,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "sliding_window": None,
            "tie_word_embeddings": True,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": self.vocab_size,
        }

    @staticmethod
    def from_hf_json(j):
        rope = j.get("rope_parameters") or {"rope_theta": j["rope_theta"]}
        return Config(vocab_size=j["vocab_size"], hidden_size=j["hidden_size"],
                      intermediate_size=j["intermediate_size"],
                      num_hidden_layers=j["num_hidden_layers"],
                      num_attention_heads=j["num_attention_heads"],
                      num_key_value_heads=j["num_key_value_heads"], head_dim=j["head_dim"],
                      rope_theta=rope["rope_theta"],
                      max_position_embeddings=j["max_position_embeddings"],
                      rms_norm_eps=j["rms_norm_eps"], bos_token_id=j.get("bos_token_id", 0),
                      eos_token_id=j.get("eos_token_id", 0))


def rms_norm(x, weight, eps):
    # In fp32 and cast back, as transformers' Qwen3RMSNorm does.
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rope_tables(config, positions, device):
    """cos, sin [positions, head_dim] in fp32 (rotate-half layout: the frequencies twice)."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64,
                                                          device=device).float() / hd))
    t = torch.arange(positions, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x [batch, heads, seq, head_dim]; cos/sin [seq, head_dim].
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + causal mask) v over [batch, heads, seq, head_dim]; PyTorch's
    fused kernels where it has them (2.0 on), plain operations otherwise (Debian's 1.13)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return (scores.masked_fill(mask, float("-inf")).softmax(-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        c = self.c
        q = self.q_norm(self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim))
        k = self.k_norm(self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim))
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        # Under autocast the norms give fp32 (fp32 weight x bf16): attend in v's dtype (bf16), so
        # that the fused flash kernel runs.
        q, k, v = q.to(v.dtype), k.to(v.dtype), v.transpose(1, 2)
        group = c.num_attention_heads // c.num_key_value_heads
        if group > 1:  # [b, kv, t, d] -> [b, kv * group, t, d], query head h uses kv h // group
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        y = causal_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = Mlp(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3LM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.model.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.model.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self._rope = None

    def init_weights(self, seed):
        """N(0, 0.02) matrices, output projections of each block scaled by 1/sqrt(2 layers),
        norms 1."""
        g = torch.Generator().manual_seed(seed)
        scaled = 0.02 / math.sqrt(2 * self.config.num_hidden_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    std = scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def rope(self, t, device):
        if self._rope is None or self._rope[0].shape[0] < t or self._rope[0].device != device:
            self._rope = rope_tables(self.config, max(t, 2048), device)
        return self._rope[0][:t], self._rope[1][:t]

    def hidden(self, ids):
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[1], ids.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, ids):
        """Logits [batch, seq, vocab] (output matrix tied to the embeddings)."""
        return F.linear(self.hidden(ids), self.model.embed_tokens.weight)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


# ---- Hugging Face folder layout ----

_DTYPES = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2)}


def _tensor_bytes(t, dtype_name):
    t = t.detach().to("cpu", _DTYPES[dtype_name][0]).contiguous()
    if dtype_name == "BF16":
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, dtype_name):
    """tensors: [(name, tensor)] in the order written."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors:
        data = _tensor_bytes(t, dtype_name)
        header[name] = {"dtype": dtype_name, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        torch_dtype, _ = _DTYPES[info["dtype"]]
        raw = bytearray(data[begin:end])
        if info["dtype"] == "BF16":
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(raw, dtype=torch_dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def save_hf(model, directory, dtype_name="BF16", max_shard_bytes=15_000_000):
    """config.json and model.safetensors, or model-0000k-of-0000n.safetensors shards (each under
    max_shard_bytes, the device's limit on a returned file) with model.safetensors.index.json."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(model.config.hf_json({"BF16": "bfloat16", "F32": "float32"}[dtype_name]), f,
                  indent=1)
    element = _DTYPES[dtype_name][1]
    shards, current, size = [], [], 0
    for name, p in model.state_dict().items():
        n = p.numel() * element
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, p))
        size += n
    shards.append(current)
    for stale in os.listdir(directory):
        if stale.startswith("model") and stale.endswith((".safetensors", ".index.json")):
            os.remove(os.path.join(directory, stale))
    if len(shards) == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), shards[0], dtype_name)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        write_safetensors(os.path.join(directory, name), shard, dtype_name)
        for tensor_name, p in shard:
            weight_map[tensor_name] = name
            total += p.numel() * element
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def load_hf(directory, device="cpu"):
    """Qwen3LM from a folder save_hf wrote (weights upcast to fp32)."""
    with open(os.path.join(directory, "config.json")) as f:
        config = Config.from_hf_json(json.load(f))
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        state.update(read_safetensors(os.path.join(directory, name)))
    model = Qwen3LM(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device)
