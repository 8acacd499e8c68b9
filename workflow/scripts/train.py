# Snakemake adapter: train the classifier (logic in virnucpro.train).
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.runner import run_step


def train(sm):
    from virnucpro.train import LabelledFile, TrainingSettings, train_run

    settings = sm.config["train"]
    files = []
    for name, directory in sm.params.files.items():
        role, label, index = name.split("-")
        role_files = settings if role == "train" else settings.get("validation", {})
        fasta = role_files[label][int(index)]
        mine = [p for p in sm.input.features if p.startswith(f"{directory}/")]
        files.append(LabelledFile(
            fasta, int(label == "virus"), float(settings.get("weights", {}).get(fasta, 1.0)),
            role == "validation", mine,
            [f"{directory}/prepare/shards/{Path(p).stem}.index.tsv" for p in mine]))
    fields = TrainingSettings.__dataclass_fields__
    train_run(files, TrainingSettings(**{k: v for k, v in settings.items() if k in fields}),
              sm.config["chunk_size"], sm.output.model, sm.output.metrics, sm.output.roc,
              sm.output.scores)


run_step(snakemake.log[0], train, snakemake)
