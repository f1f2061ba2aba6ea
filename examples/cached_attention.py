"""A plain-PyTorch attention layer (no Hugging Face model) decoding with a DepthCache.

The layer follows the cache protocol of the docs page "Generating with a repeated
layer": an int ``layer_idx``, ``cache.update(keys, values, layer_idx)`` with tensors of
shape ``(batch, heads, new_positions, head_dim)``, attention to what it returns, and
``cache.get_seq_length()`` for the positions already cached. Run it:

    python examples/cached_attention.py

It decodes greedily twice, recomputing the whole sequence at every step and with a
``DepthCache``, and prints whether the tokens agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from stochdepth import DepthCache, FixedDepth, RepeatedBlock


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that reads and writes a key/value cache."""

    def __init__(self, width: int, heads: int, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # the cache's address for this layer
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, cache: DepthCache | None = None) -> Tensor:
        """Attend from the new positions ``x`` to every position, cached or new."""
        batch, new, width = x.shape
        q, k, v = self.qkv(x).view(batch, new, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:  # every position's keys and values, this repeat's slot
            k, v = cache.update(k, v, self.layer_idx)
        past = k.shape[-2] - new
        # Query i (position past + i) sees keys 0 .. past + i.
        mask = torch.ones(new, past + new, dtype=torch.bool).tril(past)
        y = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, new, width))


class Layer(nn.Module):
    """A pre-norm transformer layer: attention and an MLP, each a residual branch."""

    def __init__(self, width: int, heads: int, layer_idx: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, layer_idx)
        hidden = 2 * width
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Linear(hidden, width),
        )

    def forward(self, x: Tensor, cache: DepthCache | None = None) -> Tensor:
        """One repeat: the cache reaches the attention as the block's extra argument."""
        x = x + self.attention(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class LoopedLM(nn.Module):
    """Embeddings, one layer repeated ``depth`` times, a head."""

    def __init__(
        self,
        vocab: int = 50,
        width: int = 32,
        heads: int = 4,
        depth: int = 6,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(256, width)
        layer = Layer(width, heads, layer_idx=0)
        self.block = RepeatedBlock(layer, FixedDepth(depth), eval_depth=depth)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor, cache: DepthCache | None = None) -> Tensor:
        """Logits for the new tokens ``ids``, the positions after those cached."""
        start = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1])
        h = self.embed(ids) + self.position(positions)
        return self.head(self.block(h, cache=cache))


def decode(model: LoopedLM, prompt: Tensor, steps: int, cached: bool) -> Tensor:
    """Greedy decoding: with a DepthCache, or recomputing all positions each step."""
    ids, cache = prompt, DepthCache(model) if cached else None
    new = prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(new if cached else ids, cache)
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            new = token
    return ids


torch.manual_seed(0)
model = LoopedLM().eval()
prompt = torch.randint(0, 50, (2, 5))
recomputed = decode(model, prompt, steps=12, cached=False)
cached = decode(model, prompt, steps=12, cached=True)
print("tokens agree:", torch.equal(cached, recomputed))
print(cached[0].tolist())
