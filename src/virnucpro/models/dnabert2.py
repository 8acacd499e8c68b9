"""DNABERT-2 / DNABERT-S in plain PyTorch, loading the original model files.

zhihan1996/DNABERT-S (and DNABERT-2-117M) ship their model as Hugging Face
remote code (``bert_layers.py``, MosaicBERT): BERT without position embeddings,
ALiBi attention biases, one fused ``Wqkv`` projection, a gated-GLU feed-forward
block and post-LayerNorm residuals. That remote code does not run under the
pinned transformers, so this module re-implements the same math with the same
parameter names (a published state_dict loads unchanged) and runs attention
through ``scaled_dot_product_attention`` so that padded batches and bf16 work.

Semantics reproduced from the remote code, in eval mode (dropout off):

* embeddings: ``LayerNorm(word[ids] + token_type[0])``; no position embeddings.
* attention: ``Wqkv`` output laid out as ``(3, heads, head_dim)``; scores are
  ``q.k / sqrt(head_dim) + alibi + padding``, ALiBi bias ``-slope_h * |i - j|``
  with the ALiBi paper's slopes (and its workaround for head counts that are not
  a power of two); then ``LayerNorm(dense(attn) + x)``.
* MLP: ``gated_layers`` (no bias) gives ``[gate | value]``, ``exact GELU(gate) *
  value``, then ``LayerNorm(wo(.) + x)``.
* hidden states of padded positions are zero in the output (the remote code
  unpads and re-pads with zeros).

The original VirNucPro embeds one unpadded sequence at a time and takes the mean
of the last hidden state over all tokens, [CLS] and [SEP] included;
:meth:`DnaBert2Encoder.embed` gives the same numbers for a padded batch.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from collections.abc import Callable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from torch import nn

from virnucpro.errors import ModelError, one_line
from virnucpro.hashing import short_sha256
from virnucpro.models.formats import (CONFIG_NAME, SAFETENSORS_NAME, TOKENIZER_NAME,
                                      dnabert_weights, missing_dnabert_file,
                                      unreadable_dnabert_config, unreadable_weights)
from virnucpro.models.published import DNABERT_S_PAGE
from virnucpro.models.torchfile import load_weights_only, place

log = logging.getLogger(__name__)


# DNABERT-2's special tokens, in the order (and so with the ids) of its vocabulary.
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")

# Keys a model file may hold that are not parameters of the encoder:
# BertForMaskedLM's MLM head, and buffers older transformers versions saved.
_IGNORED_PREFIXES = ("cls.",)
_IGNORED_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})


@dataclass(frozen=True)
class DnaBert2Config:
    """The config.json fields the encoder depends on; defaults are DNABERT-2's."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DnaBert2Config:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, where: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ModelError(f"{where}: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}; check the "
                             "model's config.json")


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes, as in the ALiBi paper and DNABERT-2's bert_layers.py.

    For 2**k heads the slopes are the geometric sequence r, r**2, ... with
    r = 2**(-8 / n). Otherwise the slopes of the largest power of two below
    n_heads are followed by every other slope of the next power of two.
    """
    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


@lru_cache(maxsize=8)
def _slopes_on(n_heads: int, device: torch.device) -> torch.Tensor:
    """The slopes as a tensor on `device`, made once: copying a Python list to a GPU makes the
    host wait for the device, which must not happen once per batch."""
    return torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)


def alibi_bias(n_heads: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Symmetric ALiBi bias ``-slope_h * |i - j|`` as a float32 [heads, length, length]."""
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs()
    slopes = _slopes_on(n_heads, torch.device(device))
    return slopes[:, None, None] * -distance


# --- modules: class layout and attribute names mirror bert_layers.py so that
# --- state_dict keys are the model file's keys.

class Embeddings(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        summed = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(summed)


class SelfAttention(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, T, d]
        # SDPA's default scale is 1/sqrt(head_dim), as in the original. The bias (ALiBi and
        # the padding) is additive, in the activations' dtype: the fused memory-efficient
        # kernel takes it.
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return attended.transpose(1, 2).reshape(batch, length, -1)


class SelfOutput(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(attended) + residual)


class Attention(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class GatedLinearUnitMLP(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, value = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(F.gelu(gate) * value) + hidden)


class Layer(nn.Module):
    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GatedLinearUnitMLP(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(hidden, bias))


class Encoder(nn.Module):
    """The layers (`DnaBert2Model.forward` runs them, one module at a time)."""

    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class Pooler(nn.Module):
    """BERT's [CLS] pooler (dense + tanh); kept so model files that have it load."""

    def __init__(self, config: DnaBert2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class DnaBert2Model(nn.Module):
    """DNABERT-2's ``BertModel``; ``forward`` returns the last hidden state."""

    def __init__(self, config: DnaBert2Config, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ALiBi plus -inf on padded keys: [N, heads, T, T] in the activations' dtype.

        Every row keeps at least one finite entry (a real sequence has [CLS]),
        so the softmax never sees a row of -inf.
        """
        length = attention_mask.shape[1]
        alibi = alibi_bias(self.config.num_attention_heads, length, attention_mask.device)
        padding = torch.zeros(attention_mask.shape, device=attention_mask.device)
        padding = padding.masked_fill(attention_mask == 0, float("-inf"))
        return (alibi[None] + padding[:, None, None, :]).to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                run: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Last hidden state [N, T, hidden]; padded positions are zero. `run(module, *args)`
        runs the embeddings and each layer (see esm2.Esm2Encoder.forward)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        run = run or nn.Module.__call__
        hidden = run(self.embeddings, input_ids, token_type_ids)
        bias = self.attention_bias(attention_mask, hidden.dtype)
        for layer in self.encoder.layer:
            hidden = run(layer, hidden, bias)
        return hidden * attention_mask[..., None].to(hidden.dtype)

    def compile_layers(self) -> None:
        """Compile the layers (torch.compile, dynamic shapes): each layer's elementwise work
        fused into a few kernels, one compiled graph shared by all layers."""
        for layer in self.encoder.layer:
            layer.compile(dynamic=True)


# --- loading ----------------------------------------------------------------

def _read_config(model_dir: Path) -> DnaBert2Config:
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise missing_dnabert_file(model_dir, CONFIG_NAME)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise unreadable_dnabert_config(path, one_line(exc)) from None
    config = DnaBert2Config.from_dict(data)
    config.validate(str(path))
    return config


def _weights_path(model_dir: Path) -> Path:
    weights = dnabert_weights(model_dir)
    if weights is None:
        raise missing_dnabert_file(model_dir, None)
    return weights


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights file's tensors, memory-mapped (safetensors always; a .bin in torch's zip
    format): the file's pages, not a copy in process memory."""
    if path.name != SAFETENSORS_NAME:
        state = load_weights_only(path)
    else:
        try:
            with safe_open(str(path), framework="pt") as weights:
                state = {key: weights.get_tensor(key) for key in weights.keys()}
        except (SafetensorError, OSError) as exc:
            raise unreadable_weights(path, one_line(exc)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state_dict of tensors; save the model's state_dict")
    return state


def _encoder_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip BertForMaskedLM's ``bert.`` prefix and drop keys that are not encoder weights."""
    prefixed = any(key.startswith("bert.") for key in raw)
    state = {}
    for key, value in raw.items():
        if prefixed and key.startswith("bert."):
            key = key[len("bert."):]
        if key.startswith(_IGNORED_PREFIXES) or key in _IGNORED_KEYS:
            continue
        state[key] = value
    return state


def _build_model(config: DnaBert2Config, state: dict[str, torch.Tensor], model_dir: Path,
                 device: torch.device, dtype: torch.dtype) -> DnaBert2Model:
    """The model, built on the meta device, each weight checked then put on `device` in
    `dtype` one at a time (no random initialisation, no second copy of the weights)."""
    # The remote BertModel always has a pooler, but model files saved from
    # BertForMaskedLM do not; the pooler plays no part in the embeddings.
    with torch.device("meta"):
        model = DnaBert2Model(config, add_pooling_layer="pooler.dense.weight" in state)
    wanted = model.state_dict()
    missing = sorted(wanted.keys() - state.keys())
    if missing:
        shown = ", ".join(missing[:5])
        if len(missing) > 5:
            shown += f" and {len(missing) - 5} more"
        raise ModelError(f"{model_dir}: weights lack {len(missing)} DNABERT-2 parameters "
                         f"({shown}); the directory does not hold a DNABERT-2/DNABERT-S "
                         "model file matching its config.json")
    unexpected = sorted(state.keys() - wanted.keys())
    if unexpected:
        log.warning("%s: ignoring %d unexpected weights: %s", model_dir, len(unexpected),
                    ", ".join(unexpected[:5]))
    wrong = [key for key in wanted if state[key].shape != wanted[key].shape]
    if wrong:
        first = wrong[0]
        raise ModelError(f"{model_dir}: weights do not fit config.json: {len(wrong)} tensors "
                         f"differ in shape, first {first} is {list(state[first].shape)}, the "
                         f"config makes it {list(wanted[first].shape)}; check that config.json "
                         "belongs to these weights")
    model.load_state_dict({key: place(state[key], device, dtype) for key in wanted}, assign=True)
    return model


def _special_token_names(model_dir: Path) -> dict[str, str]:
    names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    path = model_dir / "special_tokens_map.json"
    if path.is_file():
        for role, value in json.loads(path.read_text()).items():
            if role in names:
                names[role] = value["content"] if isinstance(value, dict) else value
    return names


def _read_tokenizer(model_dir: Path) -> tuple[Tokenizer, dict[str, int]]:
    """The directory's tokenizer.json, without truncation (as the original calls it)."""
    path = model_dir / TOKENIZER_NAME
    if not path.is_file():
        raise missing_dnabert_file(model_dir, TOKENIZER_NAME)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception
        raise ModelError(f"{path}: unreadable tokenizer ({one_line(exc, 120)}); download the "
                         "model directory again") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = {}
    for role, name in _special_token_names(model_dir).items():
        token_id = tokenizer.token_to_id(name)
        if token_id is None:
            raise ModelError(f"{path}: vocabulary has no {name} token; use DNABERT-2's "
                             "tokenizer")
        ids[role] = token_id
    probe = tokenizer.encode("A").ids
    if probe[0] != ids["cls_token"] or probe[-1] != ids["sep_token"]:
        raise ModelError(f"{path}: tokenizer does not add [CLS] ... [SEP]; use DNABERT-2's "
                         "tokenizer.json (TemplateProcessing post-processor)")
    return tokenizer, ids


class DnaBert2Encoder:
    """A loaded DNABERT-2/DNABERT-S model with its tokenizer, producing mean embeddings."""

    def __init__(self, model: DnaBert2Model, tokenizer: Tokenizer, special_ids: dict[str, int],
                 model_dir: Path, weights_path: Path, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.hidden_size = model.config.hidden_size
        self.pad_id = special_ids["pad_token"]
        self.cls_id = special_ids["cls_token"]
        self.sep_id = special_ids["sep_token"]
        self.model_dir = model_dir
        self.weights_path = weights_path
        self.device = device
        self.dtype = dtype

    def tokenize(self, seqs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] tokens [SEP]`` per sequence, right-padded with [PAD].

        Returns CPU ``input_ids`` and ``attention_mask`` (1 = token, 0 = padding),
        both LongTensor [N, T]. Safe to call from a loader thread.
        """
        encodings = [encoding.ids for encoding in self.tokenizer.encode_batch(seqs)]
        length = max((len(ids) for ids in encodings), default=0)
        input_ids = torch.full((len(encodings), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encodings), length), dtype=torch.long)
        for row, ids in enumerate(encodings):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    @torch.inference_mode()
    def forward_mean(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     run: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Mean of the last hidden state over non-padding tokens (zero in it), summed in
        float32. Returns float32 [N, hidden] on the model's device.
        """
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)
        hidden = self.model(input_ids, attention_mask, run=run)
        counts = attention_mask.sum(dim=1, keepdim=True).to(torch.float32)
        return hidden.sum(dim=1, dtype=torch.float32) / counts

    @cached_property
    def _file_hashes(self) -> tuple[str, str]:
        return (short_sha256(self.weights_path),
                short_sha256(self.model_dir / TOKENIZER_NAME))

    def identity(self) -> dict[str, Any]:
        """Provenance: architecture, dtype and short hashes of the weights and tokenizer files."""
        weights_sha, tokenizer_sha = self._file_hashes
        return {
            "model": "DNABERT-2",
            **asdict(self.config),
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights_file": self.weights_path.name,
            "weights_sha256": weights_sha,
            "tokenizer_sha256": tokenizer_sha,
        }


def load_dnabert2(model_dir: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> DnaBert2Encoder:
    """Load a Hugging Face DNABERT-2/DNABERT-S directory (config, weights, tokenizer).

    Weights come from model.safetensors, else pytorch_model.bin (loaded with
    ``weights_only=True``); keys may carry BertForMaskedLM's ``bert.`` prefix.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found; download DNABERT-S "
                         f"({DNABERT_S_PAGE}) there or pass the right path")
    config = _read_config(model_dir)
    weights_path = _weights_path(model_dir)
    tokenizer, special_ids = _read_tokenizer(model_dir)
    device = torch.device(device)
    state = _encoder_state_dict(_read_state_dict(weights_path))
    model = _build_model(config, state, model_dir, device, dtype).eval().requires_grad_(False)
    return DnaBert2Encoder(model, tokenizer, special_ids, model_dir, weights_path, device, dtype)
