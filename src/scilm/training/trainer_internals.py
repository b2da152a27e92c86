"""Every private part of the Hugging Face ``Trainer`` that scilm relies on, in one place.

The Trainer has no public hook for these; each is pinned by ``tests/test_trainer_internals.py``
against the installed transformers, so an upgrade that moves one fails a test instead of silently
changing a loss or a resume.

Overridden private methods (``ScilmTrainer`` / ``SiftingTrainer``), with the parameters assumed:

* ``_get_train_sampler(train_dataset=None)``: epoch-seeded length grouping; the reuse policy's sampler.
* ``_clip_grad_norm(model)``: the one point after a window's backward passes and before the
  optimizer step (the skipped-batch gradient rescale).
* ``_save_checkpoint(model, trial)`` and ``_get_output_dir(trial)``: scilm's state and completion
  marker inside each checkpoint.
* ``_load_from_checkpoint(resume_from_checkpoint, model=None)`` and ``_load_best_model()``: strict
  reloads through ``from_pretrained`` (the Trainer's own is a non-strict ``load_state_dict``).

Private values read (the functions below):

* ``set_initial_training_values(...)[5]``: batches per epoch the Trainer plans with.
* ``_tr_loss`` / ``_total_loss_scalar``: the running loss sums (a checkpoint records the run's).
* ``_created_lr_scheduler``: set when a subclass creates its own scheduler, as the Trainer does.
"""

from __future__ import annotations

from typing import Any

import torch

# name -> the parameter names (after self) scilm's overrides assume
OVERRIDDEN_METHODS: dict[str, tuple[str, ...]] = {
    "_get_train_sampler": ("train_dataset",),
    "_clip_grad_norm": ("model",),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
}
STEPS_IN_EPOCH = 5  # position of ``steps_in_epoch`` in ``set_initial_training_values``' tuple
RUNNING_LOSS = "_tr_loss"  # tensor: step losses summed since the last log
LOGGED_LOSS = "_total_loss_scalar"  # float: step losses summed up to the last log


def steps_in_epoch(values: tuple) -> int | None:
    """Batches per epoch from ``Trainer.set_initial_training_values``' return value (``None``: unsized)."""
    return values[STEPS_IN_EPOCH]


def running_loss(trainer: Any) -> tuple[torch.Tensor | None, float]:
    """(unlogged, logged): the Trainer's step-loss sums of this process since the last log (a 0-d
    tensor, or ``None`` before training starts) and up to it (a float)."""
    unlogged = getattr(trainer, RUNNING_LOSS, None)
    logged = float(getattr(trainer, LOGGED_LOSS, 0.0))
    return (unlogged if isinstance(unlogged, torch.Tensor) else None), logged


def mark_scheduler_created(trainer: Any) -> None:
    """Tell the Trainer that ``create_scheduler`` made a new scheduler (it then steps it; see
    ``Trainer.create_scheduler``)."""
    trainer._created_lr_scheduler = True
