"""ViT self-attention whose ONNX export never holds a whole high-resolution attention matrix.

PyTorch runs attention through ``scaled_dot_product_attention``, which on the CPU never materialises the
``(heads, tokens, tokens)`` matrix. The ONNX exporter (opset 17) writes it as MatMul, Softmax, MatMul, and ONNX
Runtime then holds the matrix and its softmax for every image of the call: at 1036 px a ViT-S/14 has 5,476 tokens,
6 x 5476^2 float32 = 720 MB each, a ViT-B/14 twice that. While exporting, ``ChunkedAttention`` writes attention
over slices of the queries instead, each slice's matrix at most ``EXPORT_ATTENTION_ELEMENTS`` floats: the same
sums per query (every query still sees every key, softmax over the keys is unchanged), a bounded peak. Below the
budget (224 px: 257 tokens; 518 px: 1,370) the graph is exactly the unsliced one. Eager PyTorch is untouched.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Attention

#: floats one slice's attention matrix may hold in an exported graph (128 MB): ViT-S/14 at 1036 px in 6 slices
EXPORT_ATTENTION_ELEMENTS = 32 * 1024 * 1024


def query_slices(heads: int, tokens: int, budget: int | None = None) -> int:
    """How many equal query slices keep ``heads x slice x tokens`` within ``budget`` (default
    ``EXPORT_ATTENTION_ELEMENTS``); 1: no slicing."""
    return max(1, min(tokens, math.ceil(heads * tokens * tokens / (budget or EXPORT_ATTENTION_ELEMENTS))))


def sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, slices: int) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``(B, heads, tokens, dim)`` tensors, computed over ``slices`` query slices."""
    kt = k.transpose(-2, -1)
    step = math.ceil(q.shape[-2] / slices)
    return torch.cat([((qs * scale) @ kt).softmax(dim=-1) @ v for qs in q.split(step, dim=-2)], dim=-2)


class ChunkedAttention(Attention):
    """timm's ``Attention`` (same parameters and state dict); exports in query slices at high resolution."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        n = int(x.shape[1])
        slices = query_slices(self.num_heads, n)
        if slices == 1 or not torch.onnx.is_in_onnx_export() or attn_mask is not None or is_causal:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b = x.shape[0]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = sliced_attention(q, k, v, self.scale, slices).transpose(1, 2).reshape(b, n, self.attn_dim)
        out = self.norm(out)
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))
