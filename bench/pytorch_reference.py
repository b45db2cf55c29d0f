"""PyTorch eager reference for `attnlab bench train`: the GPT of
experiments/baby_shakespeare.toml (`--preset baby`) or experiments/shakespeare_gpu.toml
(`--preset gpu`: nanoGPT's GPU config, 6L/6H/384, block 256, batch 64, dropout 0.2) written out
in PyTorch, trained on CPU or CUDA with the same batch, block and optimizer, printing tokens/s.

Same model as attnlab's: tied token embedding (no positional embedding), pre-norm blocks with
RMSNorm (eps 1e-5, gain), fused bias-free QKV, rotate-half RoPE (base 10000) on q and k, causal
softmax attention, bias-free output projection, GELU (tanh) MLP of 4·d_model (or SwiGLU),
final RMSNorm, weights ~ N(0, 0.02). AdamW (β 0.9/0.99, ε 1e-8, weight decay 0.1 on every
parameter, as burn's AdamW), global-norm clipping 1.0, constant LR (the schedule does not change
the cost). Timing: warm-up steps excluded; tokens/s = batch·block·steps / wall time of the steps.

Precision (`--dtype`): f32 (CUDA: TF32 matmuls off), tf32 (f32 weights, TF32 tensor-core
matmuls, PyTorch's usual fast f32), bf16 / f16 (autocast: matmuls in the half type, master
weights and optimizer f32; f16 with a GradScaler). On CUDA every step is synchronised before
and after its timer.

    python bench/pytorch_reference.py [--preset baby|gpu] [--device cpu|cuda] [--dtype f32|tf32|bf16|f16]
        [--steps 50] [--threads 2] [--data datasets/tinyshakespeare/input.txt]
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rope(nn.Module):
    def __init__(self, dim, max_seq, base=10000.0):
        super().__init__()
        inv = base ** (-torch.arange(0, dim // 2, dtype=torch.float32) * 2.0 / dim)
        angles = torch.arange(max_seq, dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):  # x: [b, h, t, d]
        t, half = x.shape[2], x.shape[3] // 2
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)  # no f32 promotion under autocast
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, max_seq, mlp, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.heads, self.hd = heads, d // heads
        self.attn_norm = nn.RMSNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.rope = Rope(self.hd, max_seq)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-5)
        self.swiglu = mlp == "swiglu"
        hidden = (8 * d // 3) if self.swiglu else 4 * d
        self.up = nn.Linear(d, 2 * hidden if self.swiglu else hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, self.hd).transpose(1, 2) for z in (q, k, v))
        q, k = self.rope(q), self.rope(k)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
        # No dropout on the attention weights: attnlab's model has none there (its fused kernels
        # keep no probabilities); dropout on the embeddings and both residual branches, as attnlab.
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.out(y))
        h = self.up(self.mlp_norm(x))
        if self.swiglu:
            a, g = h.chunk(2, dim=-1)
            h = F.silu(a) * g
        else:
            h = F.gelu(h, approximate="tanh")
        return x + self.drop(self.down(h))


class Gpt(nn.Module):
    def __init__(self, vocab, d, layers, heads, max_seq, mlp, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, heads, max_seq, mlp, dropout) for _ in range(layers)])
        self.norm = nn.RMSNorm(d, eps=1e-5)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx):
        x = self.drop(self.embed(idx))
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.embed.weight.t()


PRESETS = {
    # experiments/baby_shakespeare.toml
    "baby": dict(batch=12, block=64, d_model=128, layers=4, heads=4, dropout=0.0),
    # experiments/shakespeare_gpu.toml (nanoGPT's config/train_shakespeare_char.py)
    "gpu": dict(batch=64, block=256, d_model=384, layers=6, heads=6, dropout=0.2),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="baby", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "tf32", "bf16", "f16"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    for name in ["batch", "block", "d-model", "layers", "heads"]:
        ap.add_argument(f"--{name}", type=int, default=None, help="overrides the preset")
    ap.add_argument("--dropout", type=float, default=None, help="overrides the preset")
    ap.add_argument("--mlp", default="gelu", choices=["gelu", "swiglu"])
    ap.add_argument("--data", default=None, help="text file (char-level); random tokens when absent")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    a = ap.parse_args()
    for key, value in PRESETS[a.preset].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.device == "cpu" and a.dtype != "f32":
        ap.error(f"--dtype {a.dtype} is for --device cuda (the CPU reference is f32)")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    dev = torch.device(a.device)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.dtype == "tf32"
        torch.backends.cudnn.allow_tf32 = a.dtype == "tf32"
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=a.dtype == "f16")
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.data:
        text = open(a.data, encoding="utf-8").read()
        chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        vocab = len(chars)
    else:
        vocab = 65
        data = torch.randint(0, vocab, (200_000,))
    model = Gpt(vocab, a.d_model, a.layers, a.heads, a.block, a.mlp, a.dropout).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)

    def step():
        ix = torch.randint(len(data) - a.block - 1, (a.batch,))
        x = torch.stack([data[i : i + a.block] for i in ix]).to(dev, non_blocking=True)
        y = torch.stack([data[i + 1 : i + 1 + a.block] for i in ix]).to(dev, non_blocking=True)
        with torch.autocast(a.device, dtype=half, enabled=half is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    tokens_per_sec = a.batch * a.block * a.steps / sum(times)
    ms = sorted(times)[len(times) // 2] * 1e3
    params = sum(p.numel() for p in model.parameters())
    if a.json:
        gpu = torch.cuda.get_device_name() if a.device == "cuda" else None
        print(json.dumps({"tokens_per_sec": tokens_per_sec, "ms_per_step_median": ms, "params": params, "torch": torch.__version__, "threads": a.threads,
                          "preset": a.preset, "device": a.device, "gpu": gpu, "dtype": a.dtype}))
    else:
        where = torch.cuda.get_device_name() if a.device == "cuda" else f"{a.threads} threads"
        print(f"pytorch {torch.__version__} eager, {a.preset}, {a.dtype}, {where}: {tokens_per_sec:.0f} tokens/s, {ms:.1f} ms/step (median), {params} params")


if __name__ == "__main__":
    main()
