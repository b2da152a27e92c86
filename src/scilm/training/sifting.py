"""Smart sifting inside the Hugging Face Trainer: the ``--sift-*`` switches of ``scilm train``.

* ``relative`` (the original's rule): the Trainer's own train loader is wrapped in a
  :class:`~scilm.sifting.SiftingDataloader`, which scores each raw batch with an extra forward pass.
* ``random``: a control that drops samples at the same expected rate, blind to their losses.
* ``reuse`` (InfoBatch-like): no extra pass; each sample's last training loss decides whether the
  next epoch loads it, and kept losses are re-weighted by 1/p so the gradient stays unbiased.

A sifted epoch has no fixed number of steps, so the learning rate follows the share of the
*data* consumed (warm-up, then linear decay to 0 at the last epoch's end), not the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback

from scilm.distributed import rank
from scilm.errors import ScilmError
from scilm.sifting import (
    LossConfig,
    RelativeProbabilisticSiftConfig,
    ReuseLossSifter,
    ReuseSampler,
    SiftingBaseConfig,
    SiftingDataloader,
)
from scilm.models.cls_only import cls_only_last_layer
from scilm.sifting.loss import Loss
from scilm.training import trainer_internals as internals
from scilm.training.sift_policies import SiftPolicy, sift_policy
from scilm.training.trainer import ScilmTrainer


@dataclass(frozen=True)
class SiftingPlan:
    beta: float
    history: int
    delay: int
    policy: SiftPolicy
    epochs: float | None  # None: the run is bounded by max_steps instead
    warmup_ratio: float
    seed: int
    precision: str  # the training precision, used for scoring too


class _StopAfterEpochs(TrainerCallback):
    """Ends training when the sifted data has been seen ``epochs`` times."""

    def __init__(self, trainer: "SiftingTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.data_progress() >= 1.0:
            control.should_training_stop = True

    on_epoch_end = on_step_end

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.reuse_epochs_done += 1
        self.trainer.reuse_read = 0


class ClsOnlyScoring(Loss):
    """``inner``'s per-sample losses (B,), scored with a sequence classifier's last ESM layer at <cls>
    only (:func:`scilm.models.cls_only.cls_only_last_layer`): the scoring loss reads logits alone."""

    def __init__(self, inner: Loss):
        self.inner = inner

    def __getattr__(self, name: str):
        # the sifting loader saves and restores e.g. a loss's ``generator`` for exact resume: the inner one's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def loss(self, model, transformed_batch, original_batch=None):
        with cls_only_last_layer(model):
            return self.inner.loss(model, transformed_batch, original_batch)


class SiftingTrainer(ScilmTrainer):
    """A Trainer whose training data goes through smart sifting; everything else is unchanged."""

    def __init__(self, *args: Any, sift: SiftingPlan, sift_loss: Loss, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sift = sift
        self.sift_loss = sift_loss  # scoring loss of the relative policy
        self.sifting_loader: SiftingDataloader | None = None
        self.reuse: ReuseLossSifter | None = sift.policy.reuse_sifter(len(self.train_dataset), sift.beta, sift.seed)
        self._saved_sift_state: dict | None = None
        self.reuse_sampler: ReuseSampler | None = None
        self.reuse_epochs_done, self.reuse_read = -1, 0  # reuse policy: epochs begun - 1, samples read in this one
        self.add_callback(_StopAfterEpochs(self))

    # -- data ---------------------------------------------------------------------------------------
    def _get_train_sampler(self, *args: Any, **kwargs: Any):
        if self.reuse is not None:
            self.reuse_sampler = ReuseSampler(self.reuse)
            return self.reuse_sampler
        return super()._get_train_sampler(*args, **kwargs)

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        if not self.sift.policy.in_loader:
            return loader
        config = RelativeProbabilisticSiftConfig(
            beta_value=self.sift.beta, loss_history_length=self.sift.history,
            loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=self.sift.delay)))
        precision = {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(self.sift.precision, "32")
        self.sifting_loader = SiftingDataloader(
            sift_config=config, orig_dataloader=loader, model=self.model,
            loss_impl=self.sift.policy.scoring_loss(ClsOnlyScoring(self.sift_loss), self.sift.seed),
            seed=self.sift.seed, precision=precision,
            pad_values={"input_ids": getattr(self.processing_class, "pad_token_id", 0) or 0})
        if self._saved_sift_state is not None:  # a resumed run continues the same selection
            self.sifting_loader.load_state_dict(self._saved_sift_state)
            self._saved_sift_state = None
        return self.sifting_loader

    def data_epochs(self) -> float:
        """Sifted passes over the data done (the Trainer's own epoch count restarts on resume: its
        loader has no length, so a Trainer "epoch" is not a data epoch)."""
        if self.sift.epochs is None:
            return super().data_epochs()
        return self.data_progress() * self.sift.epochs

    def epoch_complete(self) -> bool:
        """A sifted epoch has no fixed number of steps: ask the loader whether it has more."""
        loader = self.sifting_loader
        return super().epoch_complete() or (loader is not None and loader.epoch_done)

    def data_progress(self) -> float:
        """Share of the planned data passes done, in [0, 1] (of max_steps when that bounds the run).

        Counted in samples read (not steps or batches), so that it does not depend on how the data
        is batched or accumulated.
        """
        if self.sift.epochs is None:
            return min(self.state.global_step / max(1, self.args.max_steps), 1.0)
        if self.sifting_loader is not None:
            # an epoch counts as done once the loader has also yielded its final partial batch
            loader = self.sifting_loader
            done = loader.stats()["epochs"] + (1.0 if loader.epoch_done else min(loader.epoch_progress, 0.999))
        elif self.reuse_sampler is not None and self.reuse_epochs_done >= 0:
            done = self.reuse_epochs_done + min(self.reuse_read / max(1, self.reuse_sampler.plan_size), 1.0)
        else:
            done = self.state.epoch or 0.0
        return min(done / self.sift.epochs, 1.0)

    # -- loss (reuse policy) ------------------------------------------------------------------------
    def batch_loss(self, model, inputs, indices):
        """The recipe's per-sample loss sums, times 1/p for kept samples under the reuse policy."""
        sums, items, outputs = super().batch_loss(model, inputs, indices)
        if self.reuse is None or not model.training or indices is None:
            return sums, items, outputs
        self.reuse_read += len(indices)
        return self.reuse.record_sums(indices, sums, items), items, outputs

    # -- checkpoints: each rank's selector state ------------------------------------------------------
    def save_extra_state(self, path: Path) -> None:
        if self.sifting_loader is not None:
            torch.save(self.sifting_loader.state_dict(), path / f"sifting_state_rank{rank()}.pt")

    def load_extra_state(self, path: Path) -> None:
        state_file = path / f"sifting_state_rank{rank()}.pt"
        if self.sift.policy.in_loader:
            if not state_file.is_file():
                raise ScilmError(f"{path}: no {state_file.name}; was it saved by a run with the same --sift-* "
                                 "settings and number of processes?")
            self._saved_sift_state = torch.load(state_file, weights_only=True)

    # -- schedule -----------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Linear warm-up then linear decay, both measured in data consumed."""
        if self.lr_scheduler is None:
            warmup = self.sift.warmup_ratio

            def factor(_: int) -> float:
                progress = self.data_progress()
                if progress < warmup:
                    return max(progress / warmup, 1e-3)
                return max(0.0, (1.0 - progress) / max(1e-8, 1.0 - warmup))

            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            internals.mark_scheduler_created(self)
        return self.lr_scheduler

    def sifting_stats(self) -> dict[str, Any]:
        """The policy, its settings and the selector's counts (samples seen, kept, keep rate) for metrics.json."""
        stats = self.sifting_loader.stats() if self.sifting_loader is not None else self.reuse.stats()
        return {"policy": self.sift.policy.name, "beta": self.sift.beta, "history": self.sift.history,
                "delay": self.sift.delay, **stats}


def build_sifting_trainer(config, precision: str, out, trainer_kwargs: dict, sift_loss: Loss,
                          args_extra: dict[str, Any] | None = None) -> SiftingTrainer:
    """The Trainer of a ``--sift-beta`` run, for any recipe: its scoring loss (relative policy) differs;
    the training loss (and the reuse policy's per-sample scores) is ``trainer_kwargs["item_loss"]``."""
    from scilm.training.common import training_arguments

    extra = dict(args_extra or {})
    policy = sift_policy(config.sift_policy)
    if policy.in_loader and not config.max_steps:  # a sifted loader has no length
        extra["max_steps"] = sifted_step_budget(
            len(trainer_kwargs["train_dataset"]), config.batch_size, config.grad_accum, config.epochs)
    if policy.in_loader:
        # the sifting loader restores its own position on resume; the Trainer must not skip batches
        extra["ignore_data_skip"] = True
    args = training_arguments(config, out / "checkpoints", precision, **extra)
    if "max_steps" in extra and not config.max_steps:
        args.num_train_epochs = config.epochs
    settings = SiftingPlan(
        beta=config.sift_beta, history=config.sift_history, delay=config.sift_delay, policy=policy,
        epochs=None if config.max_steps else config.epochs, warmup_ratio=config.warmup_ratio,
        seed=config.seed, precision=precision)
    return SiftingTrainer(args=args, sift=settings, sift_loss=sift_loss, **trainer_kwargs)


def sifted_step_budget(n_train: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """An upper bound on optimizer steps (as if nothing were dropped): the Trainer's ``max_steps``.

    Each epoch ends its last accumulation window with an optimizer step of its own (a window never
    spans two epochs), and a sifted epoch may carry one more batch of buffered samples.
    """
    windows = math.ceil((math.ceil(n_train / batch_size) + 1) / grad_accum)
    return max(1, math.ceil(epochs) * windows + 1)
