"""VirNucPro's classifier: the original MLP, safe loading of its published files, conversion.

The published 300_model.pth / 500_model.pth are whole pickled modules (`torch.save(model)` in a
training script run as a program), so their pickle names `__main__.MLPClassifier` and torch's
Linear, BatchNorm1d and Dropout classes; the original loads them with `weights_only=False`,
which lets a hostile file run any code. Here they are read by `_SafeUnpickler`, which never
imports or calls anything the file names:

* `find_class` answers from a fixed table only, and imports nothing. Module classes
  (MLPClassifier under any module name, Linear, BatchNorm1d, Dropout) become `_ModuleRecord`,
  which only keeps the attribute dict pickle gives it; torch's tensor-rebuild functions become
  `_TensorRecord` / `_ParameterData`, which only keep or pass on their arguments; storage
  classes become their torch.dtype (immutable, not callable); `collections.OrderedDict` and
  `set` are themselves. Any other global is refused the moment the pickle names it.
* Every opcode that calls or mutates something (REDUCE, NEWOBJ, INST, OBJ, BUILD, APPENDS,
  SETITEMS, ADDITEMS) can only reach what `find_class` returned or objects built from it, so
  the only code that runs while unpickling is those containers' constructors and the stand-ins'
  few lines; the stand-ins' `__setstate__` keeps BUILD from setting attributes on them. No
  torch code runs and no tensor exists until the pickle is fully read.
* Tensors are made afterwards, only for the entries a `state_dict()` would hold, from validated
  records: the raw bytes of `data/<key>` in the zip archive, viewed with bounds-checked strides.
  The weights then go into a freshly built `MLPClassifier` (`load_state_dict(strict=True)`), so
  nothing from the file but numbers reaches the model.

A plain state dict .pth is read the same way; `.safetensors` files (written by `convert_model`)
hold only tensors by design.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from virnucpro.atomic import atomic_open
from virnucpro.hashing import file_sha256
from virnucpro.errors import UsageError
from virnucpro.errors import ModelError, one_line
from virnucpro.models.formats import (damaged_torch_file, not_a_torch_archive, sidecar_path,
                                      torch_zip_crc_problem, unreadable_classifier,
                                      unreadable_sidecar)

ARCHITECTURE = "VirNucPro MLPClassifier"
NUM_CLASSES = 2  # column 0: others, column 1: virus
BATCH_ROWS = 16384  # rows per forward pass in predict_proba: ~32 MiB of hidden activations


class MLPClassifier(nn.Module):
    """The original's MLP (prediction.py), with its attribute names and so its state dict keys.

    Linear(input_dim, hidden_dim) -> BatchNorm1d -> ReLU -> Dropout(0.5) -> Linear(hidden_dim, 2).
    """

    # The file it was loaded from, for error messages; set on the instance by load_classifier,
    # so a pickled module holds the original's attributes only.
    source: str | None = None

    def __init__(self, input_dim: int, hidden_dim: int = 512, num_class: int = NUM_CLASSES) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    @property
    def input_dim(self) -> int:
        return self.hidden_layer.in_features

    @property
    def hidden_dim(self) -> int:
        return self.hidden_layer.out_features

    @property
    def num_class(self) -> int:
        return self.output_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.dropout(F.relu(self.bn1(self.hidden_layer(x)))))

    def expected_input(self, width: int) -> None:
        """Raise ModelError unless feature rows `width` wide are what this classifier takes."""
        if width != self.input_dim:
            where = f"{self.source}: " if self.source else ""
            raise ModelError(f"{where}classifier expects {self.input_dim} features, embeddings "
                             f"have {width}: the classifier does not match the embedding models")

    @torch.inference_mode()
    def predict_proba(self, features: torch.Tensor, batch_size: int = BATCH_ROWS) -> torch.Tensor:
        """Softmax scores [N, num_class] (float32, on the classifier's device) of feature rows
        [N, D]; column 1 = virus.

        Always computed in eval mode (batch norm's running statistics, no dropout), as the
        original predicts; the module's own mode is left as it was.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be [rows, {self.input_dim}], "
                             f"not {list(features.shape)}")
        self.expected_input(features.shape[1])
        weight = self.hidden_layer.weight
        was_training = self.training
        self.eval()
        try:
            scores = [F.softmax(self(batch.to(weight.device, weight.dtype)), dim=1).float()
                      for batch in features.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(scores)


def describe(model: MLPClassifier) -> dict[str, Any]:
    """The architecture fields of a converted file's JSON sidecar."""
    return {"architecture": ARCHITECTURE, "input_dim": model.input_dim,
            "hidden_dim": model.hidden_dim, "num_class": model.num_class}


def classifier_identity(model: MLPClassifier) -> dict[str, Any]:
    """What scores were made with, for provenance and resume fingerprints: the architecture
    and the SHA-256 of the file the weights came from."""
    return {**describe(model), "file": None if model.source is None else Path(model.source).name,
            "sha256": None if model.source is None else file_sha256(Path(model.source))[:16]}


# --------------------------------------------------------------------------- safe unpickling


class _Inert:
    """Base of the classes find_class hands out in place of torch's.

    Pickle's BUILD calls `obj.__setstate__(state)` where there is one: on one of these classes
    itself that is an unbound call, which fails, so a file cannot set attributes on them; on an
    instance it refuses unless the subclass says otherwise.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"unexpected state for a {type(self).__name__}")


class _ModuleRecord(_Inert):
    """Stand-in for a pickled nn.Module: only keeps the attribute dict pickle gives it."""

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _TensorRecord(_Inert):
    """Stand-in for torch._utils._rebuild_tensor_v2: records where the tensor's numbers are.

    The fields are whatever the file gave; `_TensorReader.tensor` checks them.
    """

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                 backward_hooks: Any, metadata: Any = None) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _ParameterData(_Inert):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a parameter is its data."""

    __slots__ = ()

    def __new__(cls, data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
        return data


class _StorageRecord(NamedTuple):
    key: str  # the storage's bytes are the archive entry data/<key>
    dtype: torch.dtype
    numel: int


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "LongStorage": torch.int64, "IntStorage": torch.int32}
_MODULE_CLASSES = ("torch.nn.modules.linear.Linear", "torch.nn.modules.batchnorm.BatchNorm1d",
                   "torch.nn.modules.dropout.Dropout")
_ALLOWED_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_tensor_v2": _TensorRecord,
    "torch._utils._rebuild_parameter": _ParameterData,
    "torch._utils._rebuild_parameter_with_state": _ParameterData,
    **{name: _ModuleRecord for name in _MODULE_CLASSES},
    # A storage class stands for its dtype: an immutable C object that cannot be called.
    **{f"torch.{name}": dtype for name, dtype in _STORAGE_DTYPES.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles a torch archive's data.pkl into records; see the module docstring."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "MLPClassifier":  # __main__, units, prediction, train...: whatever ran it
            return _ModuleRecord
        # Protocol 2 (torch.save's) writes Python 2 names such as __builtin__.set; only the
        # names are translated, as pickle's own find_class does, nothing is imported.
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        try:
            return _ALLOWED_GLOBALS[f"{module}.{name}"]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _StorageRecord:
        """torch.save's storage reference: ('storage', storage type, key, location, numel)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str)
                and type(pid[4]) is int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.100}")
        return _StorageRecord(pid[2], pid[1], pid[4])


_MAX_DEPTH = 4  # module nesting; the classifier has 1, and a cyclic pickle must not recurse forever


def _module_tensors(module: _ModuleRecord, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """The entries nn.Module.state_dict() would give: parameters, persistent buffers, children."""
    state = module.state
    if depth > _MAX_DEPTH or not isinstance(state, dict):
        raise ValueError("unexpected module structure")
    skip = state.get("_non_persistent_buffers_set", set())
    entries = {**state.get("_parameters", {}),
               **{name: value for name, value in state.get("_buffers", {}).items()
                  if name not in skip}}
    tensors = {f"{prefix}{name}": value for name, value in entries.items() if value is not None}
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            if not isinstance(child, _ModuleRecord):
                raise ValueError(f"submodule {prefix}{name} is not a module")
            tensors.update(_module_tensors(child, f"{prefix}{name}.", depth + 1))
    return tensors


def _tensor_records(obj: Any, path: Path) -> dict[str, _TensorRecord]:
    """The named tensors of an unpickled whole module or state dict."""
    try:
        records = _module_tensors(obj) if isinstance(obj, _ModuleRecord) else obj
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: not a VirNucPro classifier: malformed pickled module "
                         f"({one_line(exc)})") from None
    if not (isinstance(records, dict) and records
            and all(isinstance(k, str) and isinstance(v, _TensorRecord)
                    for k, v in records.items())):
        raise ModelError(f"{path}: not a VirNucPro classifier: the file holds neither a pickled "
                         "MLPClassifier nor a state dict of tensors")
    return records


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(n) is int and n >= 0 for n in value)


class _TensorReader:
    """Makes tensors from records: storages are entries data/<key> of the zip, each read once."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}

    def storage(self, record: _StorageRecord) -> torch.Tensor:
        if record.key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{record.key}"))
            itemsize = torch.empty((), dtype=record.dtype).element_size()
            if len(raw) != record.numel * itemsize:
                raise ValueError(f"storage {record.key} holds {len(raw)} bytes, "
                                 f"not {record.numel} x {itemsize}")
            self.storages[record.key] = torch.frombuffer(raw, dtype=record.dtype)
        return self.storages[record.key]

    def tensor(self, record: _TensorRecord) -> torch.Tensor:
        if not (isinstance(record.storage, _StorageRecord) and type(record.offset) is int
                and record.offset >= 0 and _is_shape(record.size) and _is_shape(record.stride)
                and len(record.size) == len(record.stride)):
            raise ValueError("malformed tensor record")
        # as_strided refuses any view reaching past the storage
        return torch.as_strided(self.storage(record.storage), record.size, record.stride,
                                record.offset)


def _data_pkl_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """The archive's top folder ('archive/', or the saved file's stem in older torch)."""
    prefixes = [name[:-len("data.pkl")] for name in archive.namelist()
                if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(prefixes) != 1:
        raise ModelError(f"{path}: not a PyTorch file (no single data.pkl in the zip archive)")
    return prefixes[0]


def _read_archive(archive: zipfile.ZipFile, path: Path) -> dict[str, torch.Tensor]:
    prefix = _data_pkl_prefix(archive, path)
    if f"{prefix}byteorder" in archive.namelist() and \
            archive.read(f"{prefix}byteorder") != b"little":
        raise ModelError(f"{path}: saved on a big-endian machine; convert it there with "
                         "`virnucpro convert-model`")
    obj = _SafeUnpickler(io.BytesIO(archive.read(f"{prefix}data.pkl"))).load()
    reader = _TensorReader(archive, prefix)
    return {name: reader.tensor(record) for name, record in _tensor_records(obj, path).items()}


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of a torch.save zip archive (whole module or state dict), read safely."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise not_a_torch_archive(path, one_line(exc)) from None
    damage = torch_zip_crc_problem(path)
    if damage:
        raise damaged_torch_file(path, damage)
    with archive:
        try:
            return _read_archive(archive, path)
        except _RefusedGlobal as exc:
            raise ModelError(f"{path}: refused: the file's pickle asks for {exc.name}, which a "
                             "VirNucPro classifier never holds (only tensors, OrderedDict and "
                             "MLPClassifier's Linear/BatchNorm1d/Dropout modules are loaded); "
                             "nothing from the file was run") from None
        except ModelError:
            raise
        except Exception as exc:  # a hostile file can provoke any error: all mean "damaged"
            raise ModelError(f"{path}: cannot read the classifier ({one_line(exc)}); the file "
                             "is damaged or not a PyTorch file") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable_classifier(path, one_line(exc)) from None


# --------------------------------------------------------------------------- loading


def _classifier_from_state(state: dict[str, torch.Tensor], path: Path) -> MLPClassifier:
    """A fresh MLPClassifier holding `state`; its sizes are those of the weights."""
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        num_class = state["output_layer.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        names = sorted(state)
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ModelError(f"{path}: not a VirNucPro classifier: its weights are {listed}, "
                         "not hidden_layer.*, bn1.* and output_layer.*") from None
    if num_class != NUM_CLASSES:
        raise ModelError(f"{path}: the classifier has {num_class} classes; VirNucPro's has "
                         f"{NUM_CLASSES} (others, virus)")
    model = MLPClassifier(input_dim, hidden_dim, num_class)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: not a VirNucPro classifier ({one_line(exc, 400)})") from None
    model.source = str(path)
    return model


def _check_sidecar(path: Path, model: MLPClassifier) -> None:
    """A sidecar, where there is one, must describe the weights beside it."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return
    try:
        recorded = json.loads(sidecar.read_text())
        wrong = {key: (recorded.get(key), value) for key, value in describe(model).items()
                 if recorded.get(key) != value}
    except (OSError, ValueError, AttributeError) as exc:
        raise unreadable_sidecar(sidecar, one_line(exc)) from None
    if wrong:
        listed = ", ".join(f"{key} {said!r} but the weights say {value!r}"
                           for key, (said, value) in wrong.items())
        raise ModelError(f"{sidecar}: does not describe {path.name}: {listed}; "
                         "convert the model again")


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> MLPClassifier:
    """Load a classifier file, safely, in eval mode; its sizes come from its weights.

    Accepted: the published whole-module .pth (300_model.pth, 500_model.pth), a state dict
    .pth, or a .safetensors file with the original parameter names (and optionally its JSON
    sidecar, which must then agree with the weights).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: classifier not found; pass the published 300_model.pth or "
                         "500_model.pth (matching the chunk size), or a converted .safetensors")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_file(path)
    model = _classifier_from_state(state, path)
    _check_sidecar(path, model)
    return model.to(device).eval()


def convert_model(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Convert any classifier file to `dst` (.safetensors) plus its JSON sidecar.

    The weights keep the original parameter names. Both files are published atomically, the
    sidecar last. Returns the sidecar's content.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst}: the converted classifier is written as .safetensors; "
                         "name the output file *.safetensors")
    model = load_classifier(src)
    return save_classifier(model, dst, {"source_sha256": file_sha256(src)})


def save_classifier(model: MLPClassifier, dst: str | os.PathLike, about: dict[str, Any]
                    ) -> dict[str, Any]:
    """Write `model` as safetensors (original parameter names) plus its JSON sidecar:
    the architecture fields and `about`. Both atomic, the sidecar last; returns the sidecar."""
    dst = Path(dst)
    described = {**describe(model), **about}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(dst) as handle:
        handle.write(safetensors.torch.save(
            {key: value.contiguous() for key, value in model.state_dict().items()}))
    with atomic_open(sidecar_path(dst), "w") as handle:
        json.dump(described, handle, indent=2)
        handle.write("\n")
    return described
