"""Cross-checks an `attnlab export` with an independent PyTorch re-implementation.

Loads model.safetensors with the `safetensors` package, rebuilds the GPT in plain PyTorch from
the documented tensor names and equations alone (README: "Exporting to PyTorch"), runs the probe
tokens of probe.safetensors and compares the logits with the ones attnlab computed:
max |Δ| / max |logit| must be ≤ 1e-5 (float64 here, float32 in attnlab).

Covers attention kinds mha, mqa, gqa (one module: kv heads from the QKV shape) and mla
(dims from the tensor shapes). The model: tied token embedding, plus `positions.weight[:T]`
when the model has learned position embeddings (`model.positions = "learned"`),
pre-norm blocks `x += attn(rms(x)); x += mlp(rms(x))`, RMSNorm `x / sqrt(mean(x²) + 1e-5) * gamma`,
final RMSNorm, logits `h @ embedᵀ`. Linear weights are stored `[d_in, d_out]`: `y = x @ W`.
RoPE: rotate-half, `θ_i = base^(-2i/d)` over the rotated width d.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch safetensors
    attnlab export runs/<experiment>/<run-id>
    .venv-torch/bin/python tools/check_export.py runs/<experiment>/<run-id>/export

Exit status 0 when the logits match, 1 when they do not, 2 for a kind it does not cover.

Planted in this script and seen to fail against 300-step Tiny Shakespeare models (GQA-2 with
SwiGLU, MLA with q_latent 48; relative error in brackets): RoPE off on q (0.70), RoPE rotated
backwards (0.67), scale 1/d (0.49), GQA head i on K/V group i mod g (0.80), causal mask off by
one (0.28), RMSNorm eps 1e-6 (4e-3), MLA k_R not rotated (0.54), MLA scale 1/√d_h (0.07),
exact GELU instead of tanh (1.7e-4).
"""

import json
import math
import sys

import torch
from safetensors.torch import load_file

EPS = 1e-5
TOLERANCE = 1e-5


def rms(x, gamma):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * gamma


def rope(x, base):
    """x: [b, h, t, d] at positions 0..t."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * theta[None, :]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def causal_attention(q, k, v, scale):
    """q [b, h, t, d], k [b, h, t, d], v [b, h, t, dv]: naive softmax with a dense mask."""
    t = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def grouped_query(x, w, p, heads, base):
    b, t, _ = x.shape
    qkv = x @ w[p + "qkv.weight"]
    d = w[p + "out.weight"].shape[0] // heads
    kv_heads = (qkv.shape[-1] // d - heads) // 2
    qkv = qkv.view(b, t, heads + 2 * kv_heads, d).transpose(1, 2)
    q = rope(qkv[:, :heads], base)
    k = rope(qkv[:, heads : heads + kv_heads], base)
    v = qkv[:, heads + kv_heads :]
    # Query head i reads K/V head i // (heads / kv_heads).
    group = torch.arange(heads) // (heads // kv_heads)
    o = causal_attention(q, k[:, group], v[:, group], 1.0 / math.sqrt(d))
    return o.transpose(1, 2).reshape(b, t, heads * d) @ w[p + "out.weight"]


def latent(x, w, p, heads, base):
    b, t, _ = x.shape
    d = w[p + "out.weight"].shape[0] // heads
    dc = w[p + "kv_norm.gamma"].shape[0]
    r = w[p + "kv_down.weight"].shape[1] - dc
    c_q = rms(x @ w[p + "q_latent.down.weight"], w[p + "q_latent.norm.gamma"]) if p + "q_latent.down.weight" in w else x
    q = (c_q @ w[p + "q_up.weight"]).view(b, t, heads, d + r).transpose(1, 2)
    q = torch.cat([q[..., :d], rope(q[..., d:], base)], dim=-1)
    kv = x @ w[p + "kv_down.weight"]
    c_kv = rms(kv[..., :dc], w[p + "kv_norm.gamma"])
    k_r = rope(kv[..., dc:].unsqueeze(1), base).expand(b, heads, t, r)
    kv_up = (c_kv @ w[p + "kv_up.weight"]).view(b, t, heads, 2 * d).transpose(1, 2)
    k = torch.cat([kv_up[..., :d], k_r], dim=-1)
    o = causal_attention(q, k, kv_up[..., d:], 1.0 / math.sqrt(d + r))
    return o.transpose(1, 2).reshape(b, t, heads * d) @ w[p + "out.weight"]


def mlp(x, w, p, kind):
    h = x @ w[p + "up.weight"]
    if kind == "swiglu":
        hidden = h.shape[-1] // 2
        h = torch.nn.functional.silu(h[..., :hidden]) * h[..., hidden:]
    else:
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
    return h @ w[p + "down.weight"]


def logits(tokens, w, config):
    if config.get("loops", 1) != 1:
        print("a looped model (model.loops): not re-implemented here")
        sys.exit(2)
    if config.get("pattern") or config.get("overrides"):
        print("a hybrid layer schedule (model.pattern / model.overrides): not re-implemented here")
        sys.exit(2)
    kind = config["attention"]["kind"]
    attention = {"mha": grouped_query, "mqa": grouped_query, "gqa": grouped_query, "mla": latent}.get(kind)
    if attention is None:
        print(f"attention kind {kind!r}: not re-implemented here (mha, mqa, gqa, mla)")
        sys.exit(2)
    if config["attention"].get("rope") is False:
        print("NoPE MLA (rope = false): not re-implemented here")
        sys.exit(2)
    x = w["embed.weight"][tokens]
    if "positions.weight" in w:
        x = x + w["positions.weight"][: tokens.shape[-1]]
    for i in range(config["layers"]):
        p = f"blocks.{i}."
        x = x + attention(rms(x, w[p + "attn_norm.gamma"]), w, p + "attn.", config["heads"], config["rope_base"])
        x = x + mlp(rms(x, w[p + "mlp_norm.gamma"]), w, p + "mlp.", config["mlp"])
    return rms(x, w["norm.gamma"]) @ w["embed.weight"].T


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    folder = sys.argv[1]
    config = json.load(open(f"{folder}/config.json"))
    weights = {k: v.double() for k, v in load_file(f"{folder}/model.safetensors").items()}
    probe = load_file(f"{folder}/probe.safetensors")
    with torch.no_grad():
        ours = logits(probe["tokens"], weights, config)
    theirs = probe["logits"].double()
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    print(f"{config['attention']['kind']}: {len(weights)} tensors, logits {tuple(theirs.shape)}, max |Δ| / max |logit| = {err:.2e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if err <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
