"""The classifier: the original's files load safely and score exactly as the original does."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import flip_a_stored_bit, run_cli
from virnucpro.demo_models import write_demo_classifier
from virnucpro.errors import EXIT_NOINPUT
from virnucpro.models.classifier import (MLPClassifier, ModelError, convert_model,
                                         load_classifier, sidecar_path)

INPUT_DIM, HIDDEN_DIM = 48, 16

# Run as a program, as the original's training script: the pickle names __main__.MLPClassifier.
# The class is prediction.py's, verbatim. The malicious files each run `touch MARKER` on load.
ORIGINAL_SCRIPT = """
import os, subprocess, sys
import torch
from torch import nn
import torch.nn.functional as F


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()

        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)

        self.output_layer = nn.Linear(hidden_dim, num_class)

        self.dropout = nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self):
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


class Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


out, marker, input_dim, hidden_dim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(1)
model = MLPClassifier(input_dim, hidden_dim, 2)
with torch.no_grad():
    for tensor in (model.hidden_layer.bias, model.output_layer.bias, model.bn1.bias,
                   model.bn1.running_mean):
        tensor.normal_(0.0, 0.5)
    model.bn1.weight.uniform_(0.5, 2.0)
    model.bn1.running_var.uniform_(0.5, 2.0)
    model.bn1.num_batches_tracked.fill_(777)
torch.save(model, f"{out}/original.pth")
torch.save(model.state_dict(), f"{out}/state_dict.pth")
model.eval()
features = torch.randn(300, input_dim)
with torch.no_grad():
    torch.save({"features": features, "logits": model(features)}, f"{out}/expected.pt")

torch.save(Payload(os.system, f"touch {marker}"), f"{out}/evil_system.pth")
torch.save(Payload(os.system, f"touch {marker}"), f"{out}/evil_protocol4.pth", pickle_protocol=4)
torch.save({"hidden_layer.weight": Payload(subprocess.check_call, ["touch", marker])},
           f"{out}/evil_state_dict.pth")
model.dropout.extra = Payload(exec, f"open({marker!r}, 'w').close()")  # deep in a real model
torch.save(model, f"{out}/evil_nested.pth")
"""

# The malicious files and the global each must be refused for.
MALICIOUS = {"evil_system.pth": "posix.system", "evil_protocol4.pth": "posix.system",
             "evil_state_dict.pth": "subprocess.check_call", "evil_nested.pth": "builtins.exec"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The files the original's way of saving produces, written by a separate Python process."""
    out = tmp_path_factory.mktemp("original")
    subprocess.run([sys.executable, "-c", ORIGINAL_SCRIPT, out, out / "MARKER", str(INPUT_DIM),
                    str(HIDDEN_DIM)], check=True)
    return out


@pytest.fixture(scope="module")
def expected(made) -> dict[str, torch.Tensor]:
    return torch.load(made / "expected.pt", weights_only=True)


def _data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))


def _assert_same_weights(model: MLPClassifier, made: Path) -> None:
    reference = torch.load(made / "state_dict.pth", weights_only=True)
    state = model.state_dict()
    assert list(state) == list(reference)
    for name, value in reference.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name


@pytest.mark.parametrize("name", ["original.pth", "state_dict.pth"])
def test_the_originals_files_load_with_identical_weights_and_scores(made, expected, name):
    model = load_classifier(made / name)
    assert not model.training
    assert (model.input_dim, model.hidden_dim, model.num_class) == (INPUT_DIM, HIDDEN_DIM, 2)
    _assert_same_weights(model, made)
    assert torch.equal(model.predict_proba(expected["features"]),
                       F.softmax(expected["logits"], dim=1))


def test_predict_proba_is_eval_mode_and_batched_whatever_the_mode(made, expected):
    model = load_classifier(made / "original.pth").train()
    scores = model.predict_proba(expected["features"], batch_size=7)
    assert model.training  # left as it was
    torch.testing.assert_close(scores, F.softmax(expected["logits"], dim=1), rtol=0, atol=1e-6)
    assert model.predict_proba(torch.empty(0, INPUT_DIM)).shape == (0, 2)


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_a_malicious_pickle_is_refused_without_running(made, name):
    with pytest.raises(ModelError) as raised:
        load_classifier(made / name)
    message = raised.value.one_line()
    assert message.startswith(f"{made / name}: refused:")
    assert MALICIOUS[name] in message and "nothing from the file was run" in message
    assert not (made / "MARKER").exists()


def _torch_archive(path: Path, pickled: bytes) -> Path:
    """A file laid out as torch.save writes one, around a hand-made pickle."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", bytes(16))
    return path


_MODULE_INSIDE_ITSELF = (
    b"\x80\x02c__main__\nMLPClassifier\n)\x81q\x00"  # m = MLPClassifier.__new__(), memo 0
    b"}(X\x0b\x00\x00\x00_parameters}X\x08\x00\x00\x00_buffers}"
    b"X\x08\x00\x00\x00_modules}X\x01\x00\x00\x00ah\x00su"  # {..., "_modules": {"a": m}}
    b"b.")  # BUILD: m.__setstate__(that dict)
_SET_ATTRIBUTE_ON_STAND_IN = (
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # the stand-in class itself
    b"N}(X\x08\x00\x00\x00__init__ccollections\nOrderedDict\nu\x86"  # (None, {"__init__": ...})
    b"b.")  # BUILD: set the class's __init__ (slot state)


@pytest.mark.parametrize("pickled, problem", [
    (_SET_ATTRIBUTE_ON_STAND_IN, r"cannot read the classifier \(_Inert.__setstate__"),
    (_MODULE_INSIDE_ITSELF, "malformed pickled module")])
def test_hand_made_hostile_pickles_are_refused(tmp_path, pickled, problem):
    with pytest.raises(ModelError, match=problem):
        load_classifier(_torch_archive(tmp_path / "hostile.pth", pickled))


def test_the_malicious_files_do_run_code_when_unpickled_unrestricted(made):
    """The control: the refused files really are armed (here with a harmless `touch`)."""
    torch.load(made / "evil_system.pth", weights_only=False)
    assert (made / "MARKER").exists()
    (made / "MARKER").unlink()


def test_a_plain_pickle_is_not_unpickled_at_all(made, tmp_path):
    plain = tmp_path / "plain.pth"
    plain.write_bytes(_data_pkl(made / "evil_system.pth"))  # a bare pickle, outside a zip
    with pytest.raises(ModelError, match="not a PyTorch zip archive"):
        load_classifier(plain)
    assert not (made / "MARKER").exists()


def test_damaged_foreign_and_missing_files_are_reported(made, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((made / "original.pth").read_bytes()[:5000])
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    cases = {truncated: "not a PyTorch zip archive", other: "not a VirNucPro classifier",
             tmp_path / "missing.pth": "classifier not found"}
    for path, problem in cases.items():
        with pytest.raises(ModelError, match=problem):
            load_classifier(path)


def test_a_flipped_bit_is_found_by_the_archives_checksums(made, tmp_path):
    flipped = tmp_path / "500_model.pth"
    flipped.write_bytes((made / "original.pth").read_bytes())
    flip_a_stored_bit(flipped)
    with pytest.raises(ModelError, match=r"500_model.pth: the file is damaged \(the CRC-32 "
                       r"checksum of its entry .* does not match\); its bytes changed"):
        load_classifier(flipped)


def test_a_classifier_of_the_wrong_width_is_reported(made):
    model = load_classifier(made / "original.pth")
    message = (f"{made / 'original.pth'}: classifier expects {INPUT_DIM} features, embeddings "
               "have 3328: the classifier does not match the embedding models")
    with pytest.raises(ModelError) as raised:
        model.expected_input(3328)
    assert str(raised.value) == message
    with pytest.raises(ModelError, match="classifier expects"):
        model.predict_proba(torch.zeros(2, 3328))
    model.expected_input(INPUT_DIM)


def test_converted_safetensors_scores_identically(made, expected, tmp_path):
    out = tmp_path / "sub" / "model.safetensors"
    described = convert_model(made / "original.pth", out)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar == described == {
        "architecture": "VirNucPro MLPClassifier", "input_dim": INPUT_DIM,
        "hidden_dim": HIDDEN_DIM, "num_class": 2,
        "source_sha256": hashlib.sha256((made / "original.pth").read_bytes()).hexdigest()}
    model = load_classifier(out)
    _assert_same_weights(model, made)
    assert torch.equal(model.predict_proba(expected["features"]),
                       F.softmax(expected["logits"], dim=1))

    sidecar_path(out).write_text(json.dumps({**sidecar, "hidden_dim": 512}))
    with pytest.raises(ModelError, match="hidden_dim 512 but the weights say 16"):
        load_classifier(out)
    sidecar_path(out).unlink()  # the sidecar is optional
    assert load_classifier(out).hidden_dim == HIDDEN_DIM


def test_the_demo_classifier_is_pickled_as_the_original_saves_it(tmp_path):
    first = write_demo_classifier(tmp_path / "a.pth", 64, seed=3)
    second = write_demo_classifier(tmp_path / "b.pth", 64, seed=3)
    assert first.read_bytes() == second.read_bytes()
    assert _data_pkl(first).startswith(b"\x80\x02c__main__\nMLPClassifier\n")
    model = load_classifier(first)
    assert (model.input_dim, model.hidden_dim) == (64, 512)
    assert model.bn1.num_batches_tracked.item() == 1000


def test_cli_convert_model(made, expected, tmp_path):
    out = tmp_path / "model.safetensors"
    run_cli("convert-model", made / "original.pth", out, check=True)
    assert torch.equal(load_classifier(out).predict_proba(expected["features"]),
                       F.softmax(expected["logits"], dim=1))

    refused = run_cli("convert-model", made / "evil_nested.pth", tmp_path / "evil.safetensors")
    assert refused.returncode == EXIT_NOINPUT
    assert refused.stderr.count("\n") == 1 and "builtins.exec" in refused.stderr
    assert not (tmp_path / "evil.safetensors").exists() and not (made / "MARKER").exists()
