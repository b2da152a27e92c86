"""``enable_sifting``: sift an existing Hugging Face ``Trainer`` in one call (``smart_sifting.integrations.trainer``)."""

from __future__ import annotations

import sys
from typing import Any

from transformers import TrainerCallback

from scilm.sifting.config import RelativeProbabilisticSiftConfig
from scilm.sifting.dataloader.sift_dataloader import SiftingDataloader
from scilm.sifting.loss import Loss


class _StopAfterEpochs(TrainerCallback):
    """Ends training once the sifting loader has gone ``num_train_epochs`` times through the data."""

    def __init__(self, holder: dict):
        self.holder = holder

    def on_epoch_end(self, args, state, control, **kwargs):
        loader = self.holder.get("loader")
        if loader is not None and loader.stats()["epochs"] >= args.num_train_epochs:
            control.should_training_stop = True


def enable_sifting(trainer: Any, sift_config: RelativeProbabilisticSiftConfig | dict, loss: Loss,
                   set_epochs: bool = False, **loader_kwargs: Any) -> Any:
    """Make ``trainer`` train on sifted batches: its own train loader, wrapped in a SiftingDataloader.

    trainer: a ``transformers.Trainer`` (or subclass); changed in place and returned.
    sift_config: a RelativeProbabilisticSiftConfig (or dict). loss: the per-sample scoring ``Loss``.
    set_epochs: the sifted loader has no length, so the Trainer needs ``max_steps``; with
        ``set_epochs=True`` it gets ``max_steps = sys.maxsize`` and training stops after
        ``num_train_epochs`` passes over the data instead (as in the original). A schedule that
        decays over ``max_steps`` then stays at its start value: pass your own scheduler or use
        ``max_steps``.
    loader_kwargs: further SiftingDataloader arguments (``batch_transforms``, ``seed``,
        ``pad_values``, ``log_batch_data``...). ``pad_values["input_ids"]`` defaults to the
        Trainer's tokenizer's pad id.
    Scoring uses ``trainer.model``, the model being trained.
    """
    holder: dict = {}
    wrapped = trainer.get_train_dataloader  # the Trainer's own (device-prepared) loader
    tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is not None:
        loader_kwargs["pad_values"] = {"input_ids": pad_id, **(loader_kwargs.get("pad_values") or {})}

    class TrainerSiftingDataloader(SiftingDataloader):
        def __iter__(self):
            yield from super().__iter__()
            # The pass is over. The Trainer counts an unsized loader's epoch in max_steps and would
            # go on asking the spent iterator for batches: end its epoch where the data ends.
            trainer.control.should_epoch_stop = True

    def get_train_dataloader():
        holder["loader"] = TrainerSiftingDataloader(sift_config=sift_config, orig_dataloader=wrapped(),
                                                    loss_impl=loss, model=trainer.model, **loader_kwargs)
        return holder["loader"]

    trainer.get_train_dataloader = get_train_dataloader
    trainer.sifting = holder  # holder["loader"]: the SiftingDataloader of the current run (stats(), state)
    if set_epochs:
        trainer.args.max_steps = sys.maxsize
        trainer.add_callback(_StopAfterEpochs(holder))
    return trainer
