"""ESM-2 protein embeddings: safe model file loading and a batched inference engine.

Model files are fair-esm's own (`esm2_t36_3B_UR50D.pt`, optionally with
`esm2_t36_3B_UR50D-contact-regression.pt` beside it). They are read with
`torch.load(weights_only=True)`, allowing only `argparse.Namespace` beyond tensors, so a
hostile file cannot run code. fair-esm's own loader then validates the file (config fields,
parameter names and shapes) on the meta device, which costs no memory and skips the random
initialisation of a 3B model; the weights go straight into `Esm2Encoder`.

`Esm2Encoder` re-implements fair-esm's ESM-2 forward pass (esm/model/esm2.py) for inference:
pre-LN transformer layers, rotary position embeddings, a fused q/k/v projection and
`F.scaled_dot_product_attention` with a key padding mask, so no attention matrix is
materialised and a whole padded batch runs at once. It reproduces the original VirNucPro
embedding: mean of the chosen layer over residue positions 1..len (BOS, EOS and padding
excluded), sequences truncated to 1022 residues.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import esm
import numpy as np
import torch
import torch.nn.functional as F
from esm.model.esm2 import ESM2
from torch import nn

from virnucpro.errors import ModelError, one_line
from virnucpro.hashing import short_sha256
from virnucpro.models.formats import esm_is_name, esm_model_location, esm_name_problem
from virnucpro.models.published import esm_address
from virnucpro.models.torchfile import load_weights_only, place

MAX_RESIDUES = 1022  # the original's truncation: 1024 tokens including BOS and EOS

# fair-esm rescales embeddings in eval as if 15% x 80% of tokens had been masked in training.
_MASK_RATIO_TRAIN = 0.15 * 0.8
# fair-esm's upgrade of fairseq names ('encoder.sentence_encoder.layers.0...' -> 'layers.0...'),
# as in esm/pretrained.py: _load_model_and_alphabet_core_v2.upgrade_state_dict.
_FAIRSEQ_PREFIX = re.compile(r"^encoder\.sentence_encoder\.|^encoder\.")


# --------------------------------------------------------------------------- tokenisation


@lru_cache(maxsize=1)
def _alphabet() -> esm.data.Alphabet:
    return esm.data.Alphabet.from_architecture("ESM-1b")


@lru_cache(maxsize=1)
def _byte_table() -> np.ndarray:
    """Token id of every single-character token, indexed by byte; -1 where there is none."""
    table = np.full(256, -1, dtype=np.int64)
    for token, index in _alphabet().tok_to_idx.items():
        if len(token) == 1:
            table[ord(token)] = index
    return table


def _encode(seq: str) -> np.ndarray:
    """Token ids of one sequence, exactly as fair-esm's `Alphabet.encode` gives them."""
    ids = None
    if seq.isascii():
        ids = _byte_table()[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
    if ids is None or (ids < 0).any():
        # Rare: special tokens such as "<mask>", whitespace or foreign letters: let fair-esm decide.
        try:
            ids = np.asarray(_alphabet().encode(seq), dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"protein sequence contains {exc.args[0]!r}, "
                             "which is not in the ESM-2 alphabet") from None
    return ids


def tokenize(seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [N, T] (BOS + residues + EOS, then padding) and residue counts [N].

    Same tokens as fair-esm's `alphabet.get_batch_converter(1022)`: each sequence is cut to
    its first 1022 residues.
    """
    if not seqs:
        raise ValueError("no protein sequences to tokenize")
    encoded = [_encode(seq)[:MAX_RESIDUES] for seq in seqs]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    if not lengths.all():
        raise ValueError(f"protein sequence #{int(np.argmin(lengths)) + 1} is empty; "
                         "ESM-2 needs at least one residue")
    alphabet = _alphabet()
    tokens = np.full((len(encoded), int(lengths.max()) + 2), alphabet.padding_idx, dtype=np.int64)
    tokens[:, 0] = alphabet.cls_idx
    for row, ids in zip(tokens, encoded):
        row[1:len(ids) + 1] = ids
    tokens[np.arange(len(encoded)), lengths + 1] = alphabet.eos_idx
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


# --------------------------------------------------------------------------- the engine


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as esm/rotary_embedding.py applies it: x * cos + rotate_half(x) * sin.

    rotate_half(x) = cat(-x2, x1) is a roll by half the head size with the first half negated;
    the sign is folded into `signed_sin`, so this is three kernels instead of six.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class _Layer(nn.Module):
    """One pre-LN ESM-2 transformer layer (esm.modules.TransformerLayer, inference only)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        """One layer, updating `x` [N, T, D] in place (inference only, so nothing needs it)."""
        n, t, d = x.shape
        qkv = self.qkv(self.self_attn_layer_norm(x)).view(n, t, 3, self.heads, d // self.heads)
        # q and k rotated together; cos/sin [T, head_dim] broadcast over (2, heads).
        q, k = _rotate(qkv[:, :, :2], cos[:, None, None], sin[:, None, None]).permute(2, 0, 3, 1, 4)
        v = qkv[:, :, 2].transpose(1, 2)  # each of q, k, v: [N, H, T, head_dim]
        # fair-esm scales q by head_dim**-0.5 before the rotation; rotation is linear, so
        # SDPA's default scale on the rotated q is the same thing. In 16 bits, a fused kernel
        # (flash without a mask, memory-efficient with one) sums the softmax in float32.
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x += self.out_proj(attn.transpose(1, 2).reshape(n, t, d))
        hidden = self.fc1(self.final_layer_norm(x))
        x += self.fc2(torch.ops.aten.gelu_(hidden))
        return x


class Esm2Encoder(nn.Module):
    """ESM-2 inference on fair-esm weights: batched, SDPA attention, in float32 or 16 bits.

    Build it with `load_esm2` (a model file) or `Esm2Encoder.from_esm_state_dict` (fair-esm
    `ESM2` parameter names); demo_models.random_esm2 builds random ones for benchmarks.
    """

    def __init__(self, num_layers: int, embed_dim: int, attention_heads: int, *,
                 token_dropout: bool = True, repr_layer: int | None = None,
                 inv_freq: torch.Tensor | None = None, name: str = "esm2",
                 model_file: Path | None = None) -> None:
        super().__init__()
        if embed_dim % attention_heads or (embed_dim // attention_heads) % 2:
            raise ValueError(f"embed_dim {embed_dim} does not split into {attention_heads} "
                             "heads of even size")
        repr_layer = num_layers if repr_layer is None else repr_layer
        if not 0 <= repr_layer <= num_layers:
            raise ValueError(f"repr_layer must be within 0..{num_layers}, not {repr_layer}")
        self.num_layers, self.embed_dim = num_layers, embed_dim
        self.attention_heads = attention_heads
        self.token_dropout, self.repr_layer = token_dropout, repr_layer
        self.name, self.model_file = name, model_file
        alphabet = _alphabet()
        self.padding_idx, self.mask_idx = alphabet.padding_idx, alphabet.mask_idx
        self.embed_tokens = nn.Embedding(len(alphabet), embed_dim, padding_idx=alphabet.padding_idx)
        self.layers = nn.ModuleList(_Layer(embed_dim, attention_heads) for _ in range(num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(embed_dim)
        head_dim = embed_dim // attention_heads
        if inv_freq is None:
            exponents = torch.arange(0, head_dim, 2, device="cpu").float() / head_dim
            inv_freq = 1.0 / (10000 ** exponents)
        # A plain attribute, not a buffer: it must stay fp32 when the module is cast to bf16.
        self.inv_freq = inv_freq.detach().to("cpu", torch.float32)
        self._rotary: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.requires_grad_(False)

    @classmethod
    def from_esm_state_dict(cls, state_dict: Mapping[str, torch.Tensor], attention_heads: int,
                            device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32, **kwargs) -> Esm2Encoder:
        """Take the weights of a fair-esm `ESM2` model (its state_dict names), fusing q/k/v.

        The module is built on the meta device and each weight is put on `device` in `dtype`
        one at a time, so host memory holds at most one converted tensor beyond the result
        (with a memory-mapped model file, the file's own pages are not process memory).
        """
        num_layers = sum(1 for key in state_dict if key.endswith(".fc1.weight"))
        embed_dim = state_dict["embed_tokens.weight"].shape[1]
        inv_freq = state_dict.get("layers.0.self_attn.rot_emb.inv_freq")
        with torch.device("meta"):
            encoder = cls(num_layers, embed_dim, attention_heads, inv_freq=inv_freq, **kwargs)
        device = torch.device(device)
        weights = _encoder_state(state_dict, num_layers, lambda t: place(t, device, dtype))
        encoder.load_state_dict(weights, assign=True)
        return encoder.requires_grad_(False)

    def tokenize(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module-level `tokenize`."""
        return tokenize(seqs)

    def key_mask(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """SDPA's key mask [N, 1, 1, T] (True = attend) for host tokens; None when no sequence
        is padded, which lets SDPA pick its fastest kernels.

        It reads the tokens' values: build it on the host (the engine's loader does), never
        from tokens already on a GPU, where it would stall the host until the device is idle.
        """
        padding = tokens.eq(self.padding_idx)
        return ~padding[:, None, None, :] if bool(padding.any()) else None

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None | str = "auto",
                run: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Representation [N, T, D] of layer `repr_layer` (the last one with its final norm).

        `key_mask` comes from `key_mask(tokens)`; "auto" computes it here (a host sync when
        the tokens are on a GPU: fine for a one-off call, not for a loop over batches).
        `run(module, *args)` runs each module (the embedding, each layer, the final norm):
        by default it calls it; a float32 pass of 16-bit weights gives its own
        (virnucpro.precision.Float32Weights.run).
        """
        if isinstance(key_mask, str):
            key_mask = self.key_mask(tokens)
        run = run or nn.Module.__call__
        device = self.embed_tokens.weight.device
        tokens = tokens.to(device, non_blocking=True)
        padding = tokens.eq(self.padding_idx)
        if key_mask is not None:
            key_mask = key_mask.to(device, non_blocking=True)
        x = self._embed(run(self.embed_tokens, tokens), tokens, padding)
        cos, sin = self._cos_sin(tokens.shape[1], device, x.dtype)
        for layer in self.layers[:self.repr_layer]:
            x = run(layer, x, cos, sin, key_mask)
        if self.repr_layer == self.num_layers:
            x = run(self.emb_layer_norm_after, x)
        return x

    @torch.inference_mode()
    def forward_mean(self, tokens: torch.Tensor, lengths: torch.Tensor,
                     key_mask: torch.Tensor | None | str = "auto",
                     run: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Mean representation over residue positions 1..length: float32 [N, D], model's device.

        The positions kept are multiplied by 1 and the others by 0 (exact in any dtype), then
        summed in float32 (an elementwise sum, not a matmul: TF32 settings cannot touch it).
        """
        hidden = self(tokens, key_mask, run)
        lengths = lengths.to(hidden.device, non_blocking=True)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        keep = (positions >= 1) & (positions <= lengths[:, None])
        sums = (hidden * keep.unsqueeze(-1)).sum(1, dtype=torch.float32)
        return sums / lengths[:, None].float()

    def compile_layers(self) -> None:
        """Compile the layers (torch.compile, dynamic shapes): each layer's elementwise work
        fused into a few kernels. All layers share one compiled graph (one class, the weights
        are its inputs), made at the first batch."""
        for layer in self.layers:
            layer.compile(dynamic=True)

    def identity(self) -> dict[str, object]:
        """What produced an embedding, for provenance records."""
        return {"model": self.name, "layers": self.num_layers, "embed_dim": self.embed_dim,
                "attention_heads": self.attention_heads, "repr_layer": self.repr_layer,
                # (the key's name is part of saved fingerprints and feature files)
                "checkpoint_sha256": (None if self.model_file is None
                                      else short_sha256(self.model_file))}

    def _embed(self, x: torch.Tensor, tokens: torch.Tensor, padding: torch.Tensor
               ) -> torch.Tensor:
        """Token embeddings `x` with fair-esm's eval-time token-dropout rescaling, padding
        zeroed."""
        if self.token_dropout:
            is_mask = tokens.eq(self.mask_idx)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            observed = is_mask.sum(-1).to(x.dtype) / (~padding).sum(-1)
            x = x * (1 - _MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]
        return x * (~padding).unsqueeze(-1).to(x.dtype)

    def _cos_sin(self, length: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables [T, head_dim]: cos, and sin with its first half negated (see _rotate).

        Computed in fp32 as fair-esm does, cached per device.
        """
        cached = self._rotary.get(device)
        if cached is None or cached[0].shape[0] < length:
            inv_freq = self.inv_freq.to(device)
            freqs = torch.outer(torch.arange(max(length, 1024), device=device).float(), inv_freq)
            cached = self._rotary[device] = (torch.cat((freqs, freqs), dim=-1).cos(),
                                             torch.cat((-freqs, freqs), dim=-1).sin())
        return cached[0][:length].to(dtype), cached[1][:length].to(dtype)


def _encoder_state(state: Mapping[str, torch.Tensor], num_layers: int,
                   place_one: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map fair-esm ESM2 parameter names to `Esm2Encoder`'s, each weight placed by `place_one`
    as it is reached; q, k and v are placed, then concatenated."""
    out = {key: place_one(state[key]) for key in ("embed_tokens.weight",
                                                  "emb_layer_norm_after.weight",
                                                  "emb_layer_norm_after.bias")}
    for i in range(num_layers):
        layer, attn = f"layers.{i}.", f"layers.{i}.self_attn."
        for part in ("weight", "bias"):
            out[f"{layer}qkv.{part}"] = torch.cat([place_one(state[f"{attn}{p}_proj.{part}"])
                                                   for p in "qkv"])
            out[f"{layer}out_proj.{part}"] = place_one(state[f"{attn}out_proj.{part}"])
            for name in ("self_attn_layer_norm", "final_layer_norm", "fc1", "fc2"):
                out[f"{layer}{name}.{part}"] = place_one(state[f"{layer}{name}.{part}"])
    return out


# --------------------------------------------------------------------------- loading


def model_file(location: str | Path) -> Path:
    """Resolve a model name (in the hub cache) or a .pt path to an existing ESM-2 model file."""
    path, is_path = esm_model_location(location), not esm_is_name(location)
    wrong_name = esm_name_problem(path)
    if wrong_name:
        raise wrong_name
    if not path.is_file():
        where = ("put it there, or put it in $TORCH_HOME/hub/checkpoints/ and pass the model name"
                 if is_path else "put it there ($TORCH_HOME/hub/checkpoints/), or pass its path")
        raise ModelError(f"{path}: ESM-2 model file not found; download {esm_address(path.stem)} "
                         f"and {where}")
    return path


def read_model_file(path: Path) -> dict:
    """torch.load with weights_only=True (memory-mapped); argparse.Namespace is the only object
    allowed."""
    data = load_weights_only(path, allowed=[argparse.Namespace])
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelError(f"{path}: not a fair-esm model file (no 'model' state dict)")
    return data


def _validate_with_fair_esm(path: Path, model_data: dict, regression: dict | None) -> ESM2:
    """Run fair-esm's own loader on the meta device: config, names and shapes, no memory."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            # Contacts are never predicted, so missing regression weights do not matter;
            # copying into meta parameters is the intended no-op.
            warnings.filterwarnings("ignore", message="Regression weights not found")
            warnings.filterwarnings("ignore", message=".*to a meta parameter")
            model, _ = esm.pretrained.load_model_and_alphabet_core(path.stem, model_data,
                                                                   regression)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ModelError(f"{path}: not a usable ESM-2 model file ({one_line(exc)}); "
                         "expected fair-esm's esm2_* file format") from None
    return model


def load_esm2(location: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, repr_layer: int | None = None) -> Esm2Encoder:
    """Load an ESM-2 model file by model name (offline hub cache) or .pt path.

    `repr_layer` defaults to the last layer (36 for esm2_t36_3B_UR50D, as the original).
    """
    path = model_file(location)
    model_data = read_model_file(path)
    regression_path = path.with_name(f"{path.stem}-contact-regression.pt")
    regression = read_model_file(regression_path) if regression_path.is_file() else None
    config = _validate_with_fair_esm(path, model_data, regression)
    state = {_FAIRSEQ_PREFIX.sub("", key): value for key, value in model_data["model"].items()}
    return Esm2Encoder.from_esm_state_dict(
        state, config.attention_heads, device, dtype, token_dropout=config.token_dropout,
        repr_layer=repr_layer, name=path.stem, model_file=path)
