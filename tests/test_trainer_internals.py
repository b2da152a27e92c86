"""The private Hugging Face Trainer parts scilm relies on (training/trainer_internals.py), pinned
against the installed transformers: an upgrade that moves one fails here, not silently in a run."""

from __future__ import annotations

import inspect
import re

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from scilm.training import trainer_internals as internals
from scilm.training.sifting import SiftingTrainer
from scilm.training.trainer import ScilmTrainer

TRAINER_SOURCE = inspect.getsource(inspect.getmodule(Trainer))


def test_overridden_private_methods_exist_with_the_parameters_assumed_and_are_still_called():
    for method, parameters in internals.OVERRIDDEN_METHODS.items():
        assert hasattr(Trainer, method), method
        assert tuple(inspect.signature(getattr(Trainer, method)).parameters)[1:] == parameters, method
        assert re.search(rf"self\.{method}\b", TRAINER_SOURCE), f"the Trainer no longer uses {method}"
    # and every private Trainer method scilm overrides is in that list
    for cls in (ScilmTrainer, SiftingTrainer):
        for attribute, value in vars(cls).items():
            if attribute.startswith("_") and not attribute.startswith("__") and hasattr(Trainer, attribute):
                assert attribute in internals.OVERRIDDEN_METHODS, f"{cls.__name__}.{attribute} is not pinned"
                assert callable(value)


def test_private_values_read_are_where_they_are_assumed(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x, labels=None):
            loss = ((self.linear(x).squeeze(-1) - labels) ** 2).mean()
            return {"loss": loss}

    data = [{"x": torch.randn(2), "labels": torch.tensor(1.0)} for _ in range(7)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             num_train_epochs=1, report_to=[], use_cpu=True, logging_steps=1000, save_strategy="no")
    trainer = Trainer(model=Tiny(), args=args, train_dataset=data)
    loader = DataLoader(data, batch_size=2)
    values = trainer.set_initial_training_values(args, loader)
    assert internals.steps_in_epoch(values) == len(loader) == 4
    # the running loss sums: the unlogged tensor and the logged float, summing every step's loss
    steps: list[float] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            unlogged, logged = internals.running_loss(trainer)
            steps.append(float(unlogged) + logged)

    trainer.add_callback(Record())
    result = trainer.train()
    assert len(steps) == 2 and steps[-1] > 0
    assert abs(steps[-1] / 2 - result.training_loss) < 1e-6  # training_loss = the sums' mean over steps
    assert "self._created_lr_scheduler = True" in TRAINER_SOURCE
