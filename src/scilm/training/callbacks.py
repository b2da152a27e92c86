"""Trainer callbacks of our own (everything else is the Trainer's)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class EvalHistory(TrainerCallback):
    """Each evaluation with the *training* wall time so far (evaluation time excluded).

    ``history`` rows: ``{"step", "epoch", "train_seconds", "eval_accuracy", ...}``: the accuracy
    against wall-time curve that benchmarks compare.
    """

    def __init__(self, epoch_of=None) -> None:
        self.epoch_of = epoch_of  # () -> epochs of data done; default: the Trainer's state.epoch
        self.history: list[dict[str, float]] = []
        self._started = time.perf_counter()
        self._eval_seconds = 0.0
        self._before = 0.0  # training seconds of earlier segments of a resumed run
        self.last_metrics: dict | None = None  # the latest evaluation's metrics, runtime included, and its step

    def restore(self, history: list[dict[str, float]], train_seconds: float) -> None:
        """Continue a resumed run's curve: its earlier rows and training time."""
        self.history, self._before = list(history), float(train_seconds)

    def train_seconds(self) -> float:
        """Training wall time so far (evaluation excluded, earlier segments included)."""
        return self._before + time.perf_counter() - self._started - self._eval_seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._eval_seconds = 0.0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self.last_metrics = {**metrics, "step": state.global_step}
        self._eval_seconds += metrics.get("eval_runtime", 0.0)
        row = {"step": state.global_step, "epoch": self.epoch_of() if self.epoch_of else state.epoch,
               "train_seconds": self.train_seconds()}
        row.update({k: v for k, v in metrics.items() if k.startswith("eval_") and "runtime" not in k
                    and "per_second" not in k})
        self.history.append(row)
