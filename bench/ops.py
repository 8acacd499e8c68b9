"""One ESM-2 3B layer's operators, counted: what each precision casts and moves besides its
matrix products.

One layer of the published shape (2,560 wide, 40 heads) is built at random init on the CPU
and a padded batch of frames (N frames, the longest T tokens, a key mask) runs through it, as
the engine runs it, under a TorchDispatchMode that records every operator reaching a kernel:
views (no kernel) are left out; an operator's bytes are the tensors it reads plus those it
writes. Bytes are bytes: the figures hold on any device (a GPU runs its own kernels for the
same operators, reading and writing the same tensors).

Per precision: float16 (the GPU default), bfloat16, float32, and "mixed (before)", the
default this replaced (main d557763: float32 weights under autocast, float16 matrix products,
attention in float32):
  weight_casts_per_batch   operators converting a weight of the layer, and the MB they read
                           and write: autocast keeps no cast of a weight that needs no
                           gradient, so it casts them again at every batch (target: 0)
  non_matmul               the other kernels but matrix products and the fused attention, and
                           their bytes per token (target: at most plain bfloat16's)
  matmul, attention        the matrix products' and the fused attention kernel's counts and
                           bytes, beside them

    .venv/bin/python bench/ops.py [--frames 16] [--tokens 52]
    .venv/bin/python bench/ops.py --dry      # a tiny layer (checks the script; gpu_check.sh)

Results: printed, and saved to bench/results/ops.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from virnucpro.models.esm2 import Esm2Encoder, _Layer  # noqa: E402
from virnucpro.precision import PRECISIONS  # noqa: E402

ESM_3B = {"embed_dim": 2560, "heads": 40}
TINY = {"embed_dim": 64, "heads": 4}
MATMULS = {"mm", "addmm", "bmm", "baddbmm"}
CASTS = {"_to_copy", "to", "copy_", "_copy_from"}


def _name(func: torch._ops.OpOverload) -> str:
    return func.overloadpacket.__name__


def _tensors(tree: object) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class Kernels(TorchDispatchMode):
    """Records each operator that reaches a kernel: its name, the bytes it reads and writes,
    and whether it converts one of `weights` (storages of the layer's parameters)."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights = weights
        self.ops: list[tuple[str, int, bool]] = []  # name, bytes read and written, weight cast

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or _name(func) in ("detach", "alias", "_unsafe_view", "lift_fresh"):
            return out
        read, written = _tensors((args, kwargs)), _tensors(out)
        name = _name(func)
        moved = sum(t.numel() * t.element_size() for t in read + written)
        cast = name in CASTS and any(t.untyped_storage().data_ptr() in self.weights
                                     for t in read)
        self.ops.append((name, moved, cast))
        return out


def _kind(name: str, cast: bool) -> str:
    if cast:
        return "weight_casts"
    if name in MATMULS:
        return "matmul"
    if "scaled_dot_product" in name or name.startswith("_flash_attention") or \
            name.startswith("_efficient_attention"):
        return "attention"
    return "non_matmul"


def _mixed_attention(query, key, value, attn_mask=None, **kwargs):
    """Attention as main d557763 ran it under autocast (its models/attention.py): float32."""
    with torch.autocast("cpu", enabled=False):
        return _SDPA(query.float(), key.float(), value.float(), attn_mask=attn_mask)


_SDPA = F.scaled_dot_product_attention


@contextmanager
def _as_before() -> Iterator[None]:
    """main d557763's default: autocast float16 matrix products, float32 attention."""
    F.scaled_dot_product_attention = _mixed_attention
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def batch(frames: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token counts of a length-sorted padded batch (longest `tokens`), and its key mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(tokens * 4 // 5, tokens + 1, (frames,), generator=generator)
    lengths[0] = tokens
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    return lengths, mask[:, None, None, :]


def trace(layer: _Layer, dtype: torch.dtype, frames: int, tokens: int, before: bool) -> dict:
    """One batch through `layer` with weights and activations in `dtype`, counted."""
    lengths, mask = batch(frames, tokens)
    torch.manual_seed(1)
    x = torch.randn(frames, tokens, layer.qkv.in_features).to(dtype)
    encoder = Esm2Encoder.__new__(Esm2Encoder)  # its rotary tables, as the engine makes them
    encoder._rotary, encoder.inv_freq = {}, _inv_freq(layer)
    cos, sin = Esm2Encoder._cos_sin(encoder, tokens, x.device, x.dtype)
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    # no_grad, not inference_mode: the same kernels, but composite operators (linear,
    # layer_norm, attention) reach the mode as the kernels they decompose into.
    with torch.no_grad():
        layer(x.clone(), cos, sin, mask)  # warm: first-call allocations are not the layer's
        with Kernels(weights) as kernels, (_as_before() if before else _nothing()):
            layer(x, cos, sin, mask)
    padded = frames * tokens
    figures: dict = {"kernels": len(kernels.ops)}
    for kind in ("non_matmul", "matmul", "attention", "weight_casts"):
        ops = [op for op in kernels.ops if _kind(op[0], op[2]) == kind]
        figures[kind] = {"kernels": len(ops),
                         "kb_per_token": round(sum(op[1] for op in ops) / padded / 1e3, 1),
                         "operators": dict(Counter(op[0] for op in ops))}
        if kind == "weight_casts":
            figures["weight_casts_per_batch"] = len(ops)
            figures["weight_cast_mb_per_batch"] = round(sum(op[1] for op in ops) / 1e6, 1)
    return figures


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _inv_freq(layer: _Layer) -> torch.Tensor:
    head_dim = layer.qkv.in_features // layer.heads
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


def run(shape: dict, frames: int, tokens: int) -> dict:
    torch.manual_seed(0)
    layer = _Layer(shape["embed_dim"], shape["heads"]).requires_grad_(False)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, 0.02)
    results = {"mixed (before)": trace(layer, torch.float32, frames, tokens, before=True),
               "float32": trace(layer, torch.float32, frames, tokens, before=False)}
    for name in ("bfloat16", "float16"):
        results[name] = trace(layer.to(PRECISIONS[name].dtype), PRECISIONS[name].dtype, frames,
                              tokens, before=False)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames in the batch")
    parser.add_argument("--tokens", type=int, default=52,
                        help="the batch's longest frame, in tokens (~50 residues + 2)")
    parser.add_argument("--dry", action="store_true", help="a tiny layer (checks the script)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ops.json")
    args = parser.parse_args()
    shape = TINY if args.dry else ESM_3B
    precisions = run(shape, args.frames, args.tokens)
    default, plain = precisions["float16"], precisions["bfloat16"]
    result = {"layer": {"shape": shape, "frames": args.frames, "longest_tokens": args.tokens},
              "default_precision": "float16", "precisions": precisions,
              "targets": {"weight_casts_per_batch": 0,
                          "non_matmul_kb_per_token_at_most": plain["non_matmul"]["kb_per_token"]},
              "met": default["weight_casts_per_batch"] == 0 and
              default["non_matmul"]["kb_per_token"] <= plain["non_matmul"]["kb_per_token"],
              "dry": args.dry, "torch": torch.__version__, "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name, figures in precisions.items():
        print(f"{name:>15}: {figures['weight_casts_per_batch']} weight casts a batch "
              f"({figures['weight_cast_mb_per_batch']:,} MB moved); "
              f"{figures['non_matmul']['kernels']} "
              f"non-matmul kernels, {figures['non_matmul']['kb_per_token']} KB a token; "
              f"matmul {figures['matmul']['kb_per_token']} KB, attention "
              f"{figures['attention']['kb_per_token']} KB a token")
    print(f"targets {'met' if result['met'] else 'MISSED'}: {result['targets']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
