# Snakemake adapter: train the classifier (logic in virnucpro.train).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.runner import run_step


def train(sm):
    from virnucpro.train import TrainingSettings, labelled_sample, train_run

    settings = sm.config["train"]
    weights = settings.get("weights", {})
    files = []
    for name, directory in sm.params.files.items():  # train-virus-0, validation-nonvirus-1, ...
        role, label, index = name.split("-")
        fasta = (settings if role == "train" else settings["validation"])[label][int(index)]
        files.append(labelled_sample(directory, int(label == "virus"), weights.get(fasta, 1.0),
                                     role == "validation"))
    fields = TrainingSettings.__dataclass_fields__
    train_run(files, TrainingSettings(**{k: v for k, v in settings.items() if k in fields}),
              sm.config["chunk_size"], sm.output.model, sm.output.metrics, sm.output.roc,
              sm.output.scores)


run_step(snakemake.log[0], train, snakemake)
