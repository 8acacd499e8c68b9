"""Attention shared by ESM-2 and DNABERT-2, aware of the engine's mixed precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention (SDPA: no attention matrix is kept).

    Under autocast (the engine's "mixed" precision: 16-bit matrix multiplications over
    float32 weights) it runs in float32: the softmax of 16-bit scores, and an ALiBi bias
    added in 16 bits (|bias| grows with the distance), are where low precision moves
    embeddings most, while at the frames' lengths (~50 tokens) attention is well under 1% of
    a layer's FLOPs. Otherwise it runs in the inputs' dtype.
    """
    device = query.device.type
    if not torch.is_autocast_enabled(device):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    with torch.autocast(device, enabled=False):
        return F.scaled_dot_product_attention(query.float(), key.float(), value.float(),
                                              attn_mask=mask)
