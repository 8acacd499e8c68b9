# Snakemake adapter: train the classifier (logic in virnucpro.train).
from virnucpro.runner import run_step


def train(sm):
    from virnucpro.train import TrainingSettings, labelled_sample, train_run

    settings = sm.config["train"]
    files = []
    for name, directory in sm.params.files.items():  # train-virus-0, validation-nonvirus-1, ...
        role, label, _ = name.split("-")
        file = labelled_sample(directory, int(label == "virus"), validation=role == "validation")
        file.weight = float(settings["weights"].get(file.fasta, 1.0))  # keyed by configured path
        files.append(file)
    fields = TrainingSettings.__dataclass_fields__
    train_run(files, TrainingSettings(**{k: v for k, v in settings.items() if k in fields}),
              sm.config["chunk_size"], sm.output.model, sm.output.metrics, sm.output.roc,
              sm.output.scores)


run_step(snakemake.log[0], train, snakemake)
