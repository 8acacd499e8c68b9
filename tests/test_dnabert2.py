"""The native DNABERT-2 encoder against the remote code's names and math (bert_layers.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from virnucpro.errors import ModelError
from virnucpro.demo_models import write_demo_dnabert2
from virnucpro.models.dnabert2 import DnaBert2Encoder, alibi_slopes, load_dnabert2

def mean(encoder: DnaBert2Encoder, seqs: list[str]) -> torch.Tensor:
    """Mean embeddings of `seqs` in one padded batch, on the CPU."""
    return encoder.forward_mean(*encoder.tokenize(seqs)).cpu()


SEQS = [
    "ACGTTGCAAGCTTAGCGGATCCATGCATGC" * 8,
    "A",
    "GATTACAGATTACA" * 3,
    "",
    "TTTTTTTTTTGGGGGGGGGGCCCCCCCCCCAAAAAAAAAA" * 5,
    "NNNNACGTNNNN",
]

# ALiBi slopes written out from the ALiBi paper's recipe that bert_layers.py uses:
# 2**k heads: r, r**2, ... with r = 2**(-8/n); otherwise the 2**floor(log2 n) slopes,
# then every other slope of the next power of two.
EXPECTED_SLOPES = {
    4: [2**-2, 2**-4, 2**-6, 2**-8],
    6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
    12: [2.0**-e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)],
}


def expected_keys(layers: int, pooler: bool = True) -> list[str]:
    """bert_layers.BertModel's state_dict keys (token_type_ids is a non-persistent buffer)."""
    keys = [
        "embeddings.word_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    for i in range(layers):
        prefix = f"encoder.layer.{i}."
        keys += [prefix + name for name in (
            "attention.self.Wqkv.weight",
            "attention.self.Wqkv.bias",
            "attention.output.dense.weight",
            "attention.output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "mlp.gated_layers.weight",  # no bias in the original
            "mlp.wo.weight",
            "mlp.wo.bias",
            "mlp.layernorm.weight",
            "mlp.layernorm.bias",
        )]
    if pooler:
        keys += ["pooler.dense.weight", "pooler.dense.bias"]
    return keys


def reference_hidden(state: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """One unpadded sequence through DNABERT-2 with plain matmuls and an explicit ALiBi matrix."""
    hidden_size = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden_size // heads
    inter = config["intermediate_size"]
    eps = config["layer_norm_eps"]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[name + ".weight"] + state[name + ".bias"]

    def gelu(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    tokens = torch.tensor(ids)
    length = len(ids)
    x = (state["embeddings.word_embeddings.weight"][tokens]
         + state["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, "embeddings.LayerNorm")
    slopes = torch.tensor(EXPECTED_SLOPES[heads])
    distance = torch.tensor([[float(abs(i - j)) for j in range(length)] for i in range(length)])
    alibi = -slopes[:, None, None] * distance
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        qkv = x @ state[p + "attention.self.Wqkv.weight"].T + state[p + "attention.self.Wqkv.bias"]
        # Wqkv's output is laid out (q | k | v), each (head 0 | head 1 | ...).
        q, k, v = (qkv[:, i * hidden_size:(i + 1) * hidden_size]
                   .reshape(length, heads, head_dim).transpose(0, 1) for i in range(3))
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + alibi
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(length, hidden_size)
        attended = (attended @ state[p + "attention.output.dense.weight"].T
                    + state[p + "attention.output.dense.bias"])
        x = layer_norm(attended + x, p + "attention.output.LayerNorm")
        gated = x @ state[p + "mlp.gated_layers.weight"].T
        glu = gelu(gated[:, :inter]) * gated[:, inter:]
        out = glu @ state[p + "mlp.wo.weight"].T + state[p + "mlp.wo.bias"]
        x = layer_norm(out + x, p + "mlp.layernorm")
    return x


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dnabert2(tmp_path_factory.mktemp("dnabert2") / "model")


@pytest.fixture(scope="module")
def encoder(demo_dir: Path) -> DnaBert2Encoder:
    return load_dnabert2(demo_dir)


def test_state_dict_keys_are_the_original_names(encoder: DnaBert2Encoder) -> None:
    assert list(encoder.model.state_dict()) == expected_keys(layers=2)
    shapes = {k: tuple(v.shape) for k, v in encoder.model.state_dict().items()}
    assert shapes["encoder.layer.0.attention.self.Wqkv.weight"] == (96, 32)
    assert shapes["encoder.layer.0.mlp.gated_layers.weight"] == (128, 32)
    assert shapes["encoder.layer.0.mlp.wo.weight"] == (32, 64)


def test_demo_files_use_original_names_and_config(demo_dir: Path) -> None:
    assert sorted(load_file(str(demo_dir / "model.safetensors"))) == sorted(expected_keys(layers=2))
    config = json.loads((demo_dir / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert config["auto_map"]["AutoModel"] == "bert_layers.BertModel"


@pytest.mark.parametrize("heads", sorted(EXPECTED_SLOPES))
def test_alibi_slopes(heads: int) -> None:
    assert alibi_slopes(heads) == pytest.approx(EXPECTED_SLOPES[heads], rel=1e-12)


def test_tokenizer_specials(encoder: DnaBert2Encoder, demo_dir: Path) -> None:
    vocab = encoder.tokenizer.get_vocab()
    assert [vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert (encoder.cls_id, encoder.sep_id, encoder.pad_id) == (1, 2, 3)
    ids, mask = encoder.tokenize(SEQS)
    lengths = mask.sum(dim=1)
    for row, length in enumerate(lengths.tolist()):
        assert ids[row, 0] == encoder.cls_id
        assert ids[row, length - 1] == encoder.sep_id
        assert (ids[row, length:] == encoder.pad_id).all()
    assert lengths[3] == 2  # empty sequence: [CLS] [SEP]
    assert encoder.tokenizer.get_vocab_size() <= encoder.config.vocab_size
    assert json.loads((demo_dir / "special_tokens_map.json").read_text())["pad_token"] == "[PAD]"


@pytest.mark.parametrize("heads,hidden", [(4, 32), (6, 48)])
def test_matches_plain_reference_forward(tmp_path: Path, heads: int, hidden: int) -> None:
    model_dir = write_demo_dnabert2(tmp_path / "m", hidden=hidden, heads=heads, seed=heads)
    encoder = load_dnabert2(model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    batched = mean(encoder, SEQS)
    for row, seq in enumerate(SEQS):
        ids = encoder.tokenizer.encode(seq).ids
        # The original: torch.mean(hidden_states, dim=1) on the unpadded [1, T, H].
        expected = reference_hidden(state, config, ids).mean(dim=0)
        assert (batched[row] - expected).abs().max().item() <= 1e-5


def test_batched_equals_one_at_a_time(encoder: DnaBert2Encoder) -> None:
    batched = mean(encoder, SEQS)
    assert batched.shape == (len(SEQS), 32) and batched.dtype == torch.float32
    single = torch.cat([mean(encoder, [seq]) for seq in SEQS])
    assert (batched - single).abs().max().item() <= 1e-5
    assert not torch.isnan(batched).any()


def test_tokenize_pads_cls_tokens_sep_with_a_mask(encoder: DnaBert2Encoder) -> None:
    ids, mask = encoder.tokenize(SEQS)
    assert ids.dtype == mask.dtype == torch.long
    lengths = mask.sum(1)
    for row, length in zip(ids, lengths.tolist()):
        assert row[0] == encoder.cls_id and row[length - 1] == encoder.sep_id
        assert (row[length:] == encoder.pad_id).all()
    assert lengths.tolist() == [encoder.tokenize([seq])[1].shape[1] for seq in SEQS]


def test_padded_positions_are_zero(encoder: DnaBert2Encoder) -> None:
    ids, mask = encoder.tokenize(SEQS)
    with torch.inference_mode():
        hidden = encoder.model(ids, mask)
    assert (hidden[mask == 0] == 0).all()


def test_pytorch_bin_with_bert_prefix_loads_same_weights(demo_dir: Path, encoder: DnaBert2Encoder,
                                                         tmp_path: Path) -> None:
    bin_dir = tmp_path / "mlm"
    shutil.copytree(demo_dir, bin_dir)
    state = load_file(str(bin_dir / "model.safetensors"))
    (bin_dir / "model.safetensors").unlink()
    # BertForMaskedLM layout: encoder under "bert.", no pooler, an MLM head under "cls.".
    mlm = {f"bert.{k}": v for k, v in state.items() if not k.startswith("pooler.")}
    mlm["cls.predictions.bias"] = torch.zeros(256)
    mlm["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    torch.save(mlm, bin_dir / "pytorch_model.bin")

    loaded = load_dnabert2(bin_dir)
    assert loaded.model.pooler is None
    assert list(loaded.model.state_dict()) == expected_keys(layers=2, pooler=False)
    reference = encoder.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert torch.equal(mean(loaded, SEQS), mean(encoder, SEQS))
    assert loaded.identity()["weights_file"] == "pytorch_model.bin"


def test_missing_weights_names_the_directory(demo_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    shutil.copytree(demo_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError) as error:
        load_dnabert2(broken)
    assert str(broken) in str(error.value)
    assert "model.safetensors" in str(error.value)


def test_missing_encoder_key_is_an_error(demo_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "partial"
    shutil.copytree(demo_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["encoder.layer.1.mlp.wo.weight"]
    (broken / "model.safetensors").unlink()
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(ModelError, match="encoder.layer.1.mlp.wo.weight") as error:
        load_dnabert2(broken)
    assert str(broken) in str(error.value)


def test_demo_is_deterministic(demo_dir: Path, tmp_path: Path) -> None:
    again = write_demo_dnabert2(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (demo_dir / name).read_bytes(), name
    other = write_demo_dnabert2(tmp_path / "other", seed=1)
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (demo_dir / weights).read_bytes()


def test_identity_is_stable(encoder: DnaBert2Encoder, demo_dir: Path) -> None:
    identity = encoder.identity()
    assert identity == load_dnabert2(demo_dir).identity()
    assert identity["hidden_size"] == 32 and identity["num_hidden_layers"] == 2
    assert identity["dtype"] == "float32"
    assert len(identity["weights_sha256"]) == 16
    json.dumps(identity)


def test_bf16_runs_and_is_close(demo_dir: Path, encoder: DnaBert2Encoder) -> None:
    bf16 = load_dnabert2(demo_dir, dtype=torch.bfloat16)
    out = mean(bf16, SEQS)
    assert out.dtype == torch.float32
    reference = mean(encoder, SEQS)
    assert F.cosine_similarity(out, reference, dim=1).min().item() > 0.99
    assert (out - reference).abs().max().item() < 0.1
