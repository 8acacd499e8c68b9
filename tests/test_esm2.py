"""ESM-2: safe checkpoint loading, and the batched engine against fair-esm's own forward."""

import argparse
import hashlib
import random
import re
import shutil
import warnings
from pathlib import Path

import esm
import pytest
import torch

from conftest import flip_a_stored_bit
from virnucpro.errors import EXIT_NOINPUT, VirNucProError
from virnucpro.demo_models import random_esm2, write_demo_esm2
from virnucpro.embed import plan_batches
from virnucpro.models.esm2 import MAX_RESIDUES, ModelError, load_esm2, tokenize

AMINO = "ACDEFGHIKLMNPQRSTVWY"


class NotAllowed:
    """A class no checkpoint may unpickle."""


def _frames() -> list[str]:
    """Protein frames of mixed lengths: 1 and 2 residues, two beyond the 1022 cut."""
    rng = random.Random(7)
    lengths = [1, 2, 3, 5, 17, 30, 49, 50, 51, 52, 60, 64, 99, 100, 150, 166, 333, 1021, 1100, 1500]
    seqs = ["".join(rng.choice(AMINO) for _ in range(n)) for n in lengths]
    seqs[5] = seqs[5][:10] + "X" + seqs[5][11:]
    seqs.append("MKT<mask>LLVAG")  # exercises the token-dropout rescaling
    return seqs


FRAMES = _frames()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("esm2")
    return {"demo": write_demo_esm2(root, contact_regression=True),
            "t6_8M": write_demo_esm2(root / "esm2_t6_8M_UR50D.pt", layers=6, embed_dim=320,
                                     heads=20, seed=1)}


def _torch_load(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _fair_esm_means(path: Path, seqs: list[str]) -> dict[int, torch.Tensor]:
    """The original's embedding, all layers: fair-esm's loader and forward, one frame at a time."""
    regression = path.with_name(f"{path.stem}-contact-regression.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(
            path.stem, _torch_load(path), _torch_load(regression) if regression.exists() else None)
    model.eval()
    convert = alphabet.get_batch_converter(MAX_RESIDUES)
    layers = list(range(model.num_layers + 1))
    means: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for seq in seqs:
            tokens = convert([("frame", seq)])[2]
            n = int(tokens.ne(alphabet.padding_idx).sum()) - 2
            reps = model(tokens, repr_layers=layers)["representations"]
            for layer in layers:
                means[layer].append(reps[layer][0, 1:n + 1].mean(0))
    return {layer: torch.stack(rows) for layer, rows in means.items()}


@pytest.fixture(scope="module")
def fair_esm(checkpoints) -> dict[str, dict[int, torch.Tensor]]:
    return {name: _fair_esm_means(path, FRAMES) for name, path in checkpoints.items()}


def test_tokens_match_fair_esm_batch_converter():
    tokens, lengths = tokenize(FRAMES)
    _, _, expected = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter(
        MAX_RESIDUES)([("f", s) for s in FRAMES])
    assert torch.equal(tokens, expected)
    assert lengths.tolist() == [min(len(s), MAX_RESIDUES) for s in FRAMES[:-1]] + [9]


@pytest.mark.parametrize("name, layer",
                         [("demo", None), ("demo", 0), ("t6_8M", None), ("t6_8M", 3)])
def test_batched_engine_matches_fair_esm(checkpoints, fair_esm, name, layer):
    encoder = load_esm2(checkpoints[name], repr_layer=layer)
    layer = encoder.num_layers if layer is None else layer
    if name == "demo":  # all 21 frames in one batch padded to 1024 tokens
        ours = encoder.forward_mean(*tokenize(FRAMES))
    else:  # length-sorted batches: cheaper, still padded
        ours = length_batched(encoder, FRAMES, budget=4096)
    theirs = fair_esm[name][layer]
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    print(f"{name} layer {layer}: max abs diff {diff:.2e}")
    assert diff <= 1e-4


def length_batched(encoder, frames: list[str], budget: int) -> torch.Tensor:
    """Mean embeddings of frames in the engine's length-sorted batches, in input order."""
    tokens, lengths = tokenize(frames)
    out = torch.empty(len(frames), encoder.embed_dim)
    for rows in plan_batches((lengths + 2).numpy(), budget):
        rows = torch.from_numpy(rows)
        width = int(lengths[rows].max()) + 2
        out[rows] = encoder.forward_mean(tokens[rows, :width], lengths[rows])
    return out


def test_embed_batches_by_length_and_keeps_order(checkpoints):
    encoder = load_esm2(checkpoints["demo"])
    whole = encoder.forward_mean(*tokenize(FRAMES))
    assert torch.allclose(length_batched(encoder, FRAMES, budget=600), whole, atol=1e-5)


def test_bf16_stays_close_to_fp32(checkpoints):
    fp32 = length_batched(load_esm2(checkpoints["t6_8M"]), FRAMES, budget=4096)
    bf16 = load_esm2(checkpoints["t6_8M"], dtype=torch.bfloat16)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    low = length_batched(bf16, FRAMES, budget=4096)
    assert low.dtype == torch.float32
    assert (low - fp32).abs().max() < 0.1


def test_identity_names_the_checkpoint(checkpoints):
    path = checkpoints["t6_8M"]
    identity = load_esm2(path, repr_layer=5).identity()
    assert identity == {"model": "esm2_t6_8M_UR50D", "layers": 6, "embed_dim": 320,
                        "attention_heads": 20, "repr_layer": 5,
                        "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def test_demo_checkpoint_is_deterministic(tmp_path):
    first = _torch_load(write_demo_esm2(tmp_path / "a", seed=3))["model"]
    again = _torch_load(write_demo_esm2(tmp_path / "b", seed=3))["model"]
    other = _torch_load(write_demo_esm2(tmp_path / "c", seed=4))["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["encoder.sentence_encoder.embed_tokens.weight"],
                           other["encoder.sentence_encoder.embed_tokens.weight"])


def test_random_encoder_for_benchmarks():
    encoder = random_esm2(layers=2, embed_dim=64, heads=4, dtype=torch.bfloat16)
    out = encoder.forward_mean(*tokenize(FRAMES[:6]))
    assert out.shape == (6, 64) and torch.isfinite(out).all()
    assert encoder.identity()["checkpoint_sha256"] is None


def test_loading_never_unpickles_freely(checkpoints, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_esm2(checkpoints["demo"])  # reads the checkpoint and its contact-regression file
    assert calls == [True, True]


@pytest.mark.parametrize("target", ["checkpoint", "regression"])
def test_pickled_objects_are_refused(checkpoints, tmp_path, target):
    path = tmp_path / "esm2_t2_evil_UR50D.pt"
    shutil.copy(checkpoints["demo"], path)
    regression = path.with_name(f"{path.stem}-contact-regression.pt")
    victim = path if target == "checkpoint" else regression
    torch.save({"model": {}, "cfg": {"model": argparse.Namespace()}, "x": NotAllowed()}, victim)
    with pytest.raises(ModelError, match=r"refused: .*NotAllowed") as err:
        load_esm2(path)
    assert str(victim) in str(err.value)


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "esm2_t36_3B_UR50D.pt"
    with pytest.raises(ModelError) as err:
        load_esm2(path)
    message = err.value.one_line()
    assert isinstance(err.value, VirNucProError) and err.value.exit_code == EXIT_NOINPUT
    assert message == str(err.value) and str(path) in message
    assert "not found" in message and "hub/checkpoints" in message
    assert "models/esm2_t36_3B_UR50D.pt" in message  # where to download it


def test_name_must_start_with_esm2(checkpoints, tmp_path):
    path = tmp_path / "esm1b_t33_650M_UR50S.pt"
    shutil.copy(checkpoints["demo"], path)
    with pytest.raises(ModelError, match="must start with 'esm2'"):
        load_esm2(path)


def test_truncated_checkpoint(checkpoints, tmp_path):
    path = tmp_path / checkpoints["t6_8M"].name
    path.write_bytes(checkpoints["t6_8M"].read_bytes()[:100_000])
    with pytest.raises(ModelError, match="truncated"):
        load_esm2(path)


@pytest.mark.parametrize("damage", ["no cfg", "missing weight", "wrong shape"])
def test_wrong_architecture(checkpoints, tmp_path, damage):
    data = _torch_load(checkpoints["demo"])
    key = "encoder.sentence_encoder.layers.1.fc1.weight"
    if damage == "no cfg":
        del data["cfg"]
    elif damage == "missing weight":
        del data["model"][key]
    else:
        data["model"][key] = torch.zeros(3, 3)
    path = tmp_path / checkpoints["demo"].name
    torch.save(data, path)
    with pytest.raises(ModelError, match="not a usable ESM-2 model file"):
        load_esm2(path)


def test_load_by_name_from_torch_hub_cache(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(checkpoints["t6_8M"], hub / "esm2_t6_8M_UR50D.pt")
    assert load_esm2("esm2_t6_8M_UR50D").identity()["model"] == "esm2_t6_8M_UR50D"
    expected = re.escape(f"{hub / 'esm2_t36_3B_UR50D.pt'}: ESM-2 model file not found")
    with pytest.raises(ModelError, match=expected):
        load_esm2("esm2_t36_3B_UR50D")


@pytest.mark.parametrize("seqs, problem",
                         [(["MKV", ""], "#2 is empty"), (["MKjV"], "'j'"), ([], "no")])
def test_tokenize_rejects_bad_sequences(seqs, problem):
    with pytest.raises(ValueError, match=problem):
        tokenize(seqs)


def test_a_flipped_bit_is_found_before_the_model_loads(tmp_path):
    """torch.load never checks a zip archive's checksums: a flipped bit in a weight would
    load and change every embedding silently."""
    path = write_demo_esm2(tmp_path / "esm2_t2_demo.pt")
    flip_a_stored_bit(path)
    with pytest.raises(ModelError, match=r"esm2_t2_demo.pt: the file is damaged \(the CRC-32 "
                       "checksum of its entry"):
        load_esm2(path, "cpu")
