"""scilm: fine-tune, evaluate and serve scientific language models, fast and cheaply.

The library API mirrors the CLI::

    from scilm.training import TrainConfig, train
    metrics = train(TrainConfig(data="train.fasta", model="esm2-tiny", out="runs/demo"))
"""

__version__ = "0.1.0"
