"""Small random-init models in the published models' file formats, for demos and tests.

The real ESM-2 3B and DNABERT-S weights cannot be fetched here; these models go through the
very same loading and embedding code. Their features mean nothing biologically.

Layout of the directory:
    esm2_demo_t2_d32.pt   fair-esm model file format (the name must start with 'esm2')
    dnabert2_demo/        DNABERT-S directory format (config.json, model.safetensors,
                          tokenizer.json with a BPE vocabulary trained on random DNA)
    classifier.pth        the published classifiers' format: a whole pickled MLPClassifier
                          module, its class named __main__.MLPClassifier; it takes the demo
                          embeddings (DNABERT-S width + ESM-2 width features)
    models.json           what they are, and the sha256 of every file; written last

The manifest's hashes are how a run knows it used demo models (virnucpro.provenance): a model
file whose SHA-256 a demo manifest lists has random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
from pathlib import Path
from typing import Any

import torch
from esm.model.esm2 import ESM2
from safetensors.torch import save as safetensors_bytes
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import BpeTrainer

from virnucpro.atomic import atomic_open
from virnucpro.hashing import file_sha256
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.dnabert2 import (CONFIG_NAME, SAFETENSORS_NAME, SPECIAL_TOKENS,
                                       TOKENIZER_NAME, DnaBert2Config, DnaBert2Model)
from virnucpro.models.esm2 import Esm2Encoder

MANIFEST = "models.json"
ESM_SHAPE = {"layers": 2, "embed_dim": 32, "heads": 4}
DNABERT_SHAPE = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "vocab_size": 256}
ESM_FILE = f"esm2_demo_t{ESM_SHAPE['layers']}_d{ESM_SHAPE['embed_dim']}.pt"
DNABERT_DIR = "dnabert2_demo"
FEATURE_DIM = DNABERT_SHAPE["hidden"] + ESM_SHAPE["embed_dim"]  # DNABERT-S then ESM-2 features
CLASSIFIER_FILE = "classifier.pth"
CLASSIFIER_SHAPE = {"input_dim": FEATURE_DIM, "hidden_dim": 512}


class _MainScriptPickler(pickle._Pickler):
    """Names MLPClassifier `__main__.MLPClassifier`, as the original's training script did.

    That script ran as a program, so its class lived in `__main__`. The pure-Python pickler is
    used because only it lets one global be written under another name.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is not MLPClassifier:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + b"__main__\nMLPClassifier\n")
        self.memoize(obj)


class _AsMainScript:
    """The `pickle_module` torch.save is given: only its Pickler (and name) are used."""

    Pickler = _MainScriptPickler


def write_demo_classifier(path: str | os.PathLike, input_dim: int, seed: int = 0,
                          hidden_dim: int = 512) -> Path:
    """Write a random-init classifier as the original saves one: torch.save of the whole module.

    Batch norm's affine weights and running statistics are randomised too, so every number
    matters. The same arguments give the same file.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(input_dim, hidden_dim)
        with torch.no_grad():
            model.bn1.weight.uniform_(0.5, 1.5)
            model.bn1.bias.normal_(0.0, 0.1)
            model.bn1.running_mean.normal_(0.0, 0.1)
            model.bn1.running_var.uniform_(0.5, 1.5)
            model.bn1.num_batches_tracked.fill_(1000)
    path = Path(path)
    with atomic_open(path) as handle:
        torch.save(model, handle, pickle_module=_AsMainScript)
    return path


DESCRIPTION = ("random-init demo models in the ESM-2, DNABERT-S and VirNucPro classifier file "
               "formats; not the published weights, so their features and scores mean nothing")


def _describe(seed: int) -> dict[str, Any]:
    return {"description": DESCRIPTION,
            "seed": seed,
            "esm": {"path": ESM_FILE, **ESM_SHAPE},
            "dnabert": {"path": DNABERT_DIR, **DNABERT_SHAPE},
            "classifier": {"path": CLASSIFIER_FILE, **CLASSIFIER_SHAPE},
            "feature_dim": FEATURE_DIM}


def _file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every model file, by path relative to `directory`."""
    files = [directory / ESM_FILE, *sorted((directory / DNABERT_DIR).iterdir()),
             directory / CLASSIFIER_FILE]
    return {path.relative_to(directory).as_posix(): file_sha256(path)
            for path in files if path.is_file()}


def manifest_hashes(directory: str | os.PathLike) -> set[str]:
    """The SHA-256 of every file the demo manifest in `directory` lists; empty without one.
    A models.json of any other kind (not our description) lists nothing."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
        if manifest["description"] != DESCRIPTION:
            return set()
        return {str(digest) for digest in manifest["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _is_complete(directory: Path, described: dict[str, Any]) -> bool:
    """True when models.json describes these models and every file it lists is intact."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return ({k: v for k, v in manifest.items() if k != "files"} == described
                and manifest["files"] == _file_hashes(directory))
    except (OSError, ValueError, KeyError):
        return False


def write_demo_models(directory: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write (or keep, when already complete) the demo models; return their paths.

    Keys: 'esm' (checkpoint file), 'dnabert' (model directory), 'classifier' (.pth file),
    'manifest' (models.json).
    The same seed gives byte-identical files.
    """
    directory = Path(directory)
    paths = {"esm": directory / ESM_FILE, "dnabert": directory / DNABERT_DIR,
             "classifier": directory / CLASSIFIER_FILE, "manifest": directory / MANIFEST}
    described = _describe(seed)
    if _is_complete(directory, described):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_esm2(paths["esm"], seed=seed, **ESM_SHAPE)
    write_demo_dnabert2(paths["dnabert"], seed=seed, **DNABERT_SHAPE)
    write_demo_classifier(paths["classifier"], seed=seed, **CLASSIFIER_SHAPE)
    with atomic_open(paths["manifest"], "w") as handle:
        json.dump({**described, "files": _file_hashes(directory)}, handle, indent=2)
        handle.write("\n")
    return paths


# --------------------------------------------------------------------------- ESM-2


def _param_label(count: int) -> str:
    """'8M'-style size label as in fair-esm model names."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{round(count / scale)}{unit}"
    return str(count)


def write_demo_esm2(path: Path, layers: int = 2, embed_dim: int = 32, heads: int = 4,
                    seed: int = 0, contact_regression: bool = False) -> Path:
    """Write a random-init ESM-2 model file in fair-esm's file format; return its path.

    `path` is the .pt file or a directory (the file is then named `esm2_t{layers}_{size}_UR50D.pt`).
    The file holds {'model': fairseq-named fp16 state dict, 'cfg': {'model': Namespace}}, as the
    published checkpoints. Layer norms and biases are randomised too, so every weight matters.
    The same seed gives the same file.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers=layers, embed_dim=embed_dim, attention_heads=heads)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or "layer_norm" in name:
                    param.add_(torch.randn_like(param) * 0.1)
    path = Path(path)
    if path.suffix != ".pt":
        n_params = sum(p.numel() for n, p in model.named_parameters() if "contact" not in n)
        path = path / f"esm2_t{layers}_{_param_label(n_params)}_UR50D.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.half() for key, value in model.state_dict().items()}
    regression = {key: state.pop(key) for key in list(state) if key.startswith("contact_head.")}
    cfg = argparse.Namespace(arch="esm2", encoder_layers=layers, encoder_embed_dim=embed_dim,
                             encoder_ffn_embed_dim=4 * embed_dim, encoder_attention_heads=heads,
                             token_dropout=True)
    fairseq_state = {("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.")
                     + key: value for key, value in state.items()}
    with atomic_open(path) as handle:
        torch.save({"model": fairseq_state, "cfg": {"model": cfg}}, handle)
    if contact_regression:
        with atomic_open(path.with_name(f"{path.stem}-contact-regression.pt")) as handle:
            torch.save({"model": regression}, handle)
    return path


def random_esm2(layers: int = 36, embed_dim: int = 2560, heads: int = 40,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0, repr_layer: int | None = None) -> Esm2Encoder:
    """A random-init encoder built directly on `device` (default: the 3B architecture).

    For speed benchmarks only: no checkpoint, no fair-esm model, no host copy of the weights.
    """
    with torch.device("meta"):
        encoder = Esm2Encoder(layers, embed_dim, heads, repr_layer=repr_layer,
                              name=f"esm2_t{layers}_random")
    encoder = encoder.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return encoder


# --------------------------------------------------------------------------- DNABERT-2

def _random_dna(rng: random.Random, count: int = 300, min_len: int = 40,
                max_len: int = 400) -> list[str]:
    return ["".join(rng.choices("ACGT", k=rng.randint(min_len, max_len))) for _ in range(count)]


def train_demo_tokenizer(sequences: list[str], vocab_size: int) -> Tokenizer:
    """A BPE tokenizer shaped like DNABERT-2's (same special tokens, ids and template)."""
    tokenizer = Tokenizer(BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                         initial_alphabet=list("ACGT"), show_progress=False)
    tokenizer.train_from_iterator(sequences, trainer=trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(name, tokenizer.token_to_id(name)) for name in ("[CLS]", "[SEP]")],
    )
    return tokenizer


def _random_state_dict(config: DnaBert2Config, seed: int) -> dict[str, torch.Tensor]:
    """Random weights large enough that attention and the GLU are far from trivial."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in DnaBert2Model(config).state_dict().items():
        noise = torch.randn(param.shape, generator=generator)
        if "LayerNorm" in name or "layernorm" in name:
            value = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif "embeddings" in name:
            value = noise
        elif name.endswith("bias"):
            value = 0.1 * noise
        else:
            value = noise / math.sqrt(param.shape[1])
        state[name] = value.contiguous()
    return state


def _demo_config_json(config: DnaBert2Config) -> dict[str, Any]:
    """config.json as DNABERT-S ships it (its remote-code entries included)."""
    return {
        "_name_or_path": "virnucpro-demo-dnabert2",
        "alibi_starting_size": config.alibi_starting_size,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": config.layer_norm_eps,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": config.type_vocab_size,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


def write_demo_dnabert2(model_dir: str | Path, hidden: int = 32, layers: int = 2, heads: int = 4,
                        intermediate: int = 64, vocab_size: int = 256, seed: int = 0,
                        training_sequences: list[str] | None = None) -> Path:
    """Write a small random-init model directory in DNABERT-S's on-disk format.

    The tokenizer is a BPE vocabulary trained here on ``training_sequences``
    (default: random DNA drawn from ``seed``). Same arguments, same files.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = DnaBert2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate)
    config.validate(str(model_dir))
    sequences = training_sequences
    if sequences is None:
        sequences = _random_dna(random.Random(seed))
    tokenizer = train_demo_tokenizer(sequences, vocab_size)
    tokenizer.save(str(model_dir / TOKENIZER_NAME))
    special = dict(zip(("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"),
                       SPECIAL_TOKENS))
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **special},
        indent=2) + "\n")
    (model_dir / CONFIG_NAME).write_text(json.dumps(_demo_config_json(config), indent=2) + "\n")
    # Through atomic_open: safetensors' own writer makes the file mode 0600, whatever the umask.
    with atomic_open(model_dir / SAFETENSORS_NAME) as handle:
        handle.write(safetensors_bytes(_random_state_dict(config, seed), metadata={"format": "pt"}))
    return model_dir
