"""``TrainingMetricsRecorder``: a Lightning callback logging the sifting loader's counters (``smart_sifting.metrics.lightning``)."""

from __future__ import annotations

from typing import Any

from scilm._extras import optional_extra

with optional_extra("lightning"):
    import pytorch_lightning as pl

from scilm.sifting.dataloader.sift_dataloader import SiftingDataloader


def _find_sifting_loader(loaders: Any) -> SiftingDataloader | None:
    if isinstance(loaders, SiftingDataloader):
        return loaders
    items = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, (list, tuple)) else ()
    for item in items:
        found = _find_sifting_loader(item)
        if found is not None:
            return found
    return None


class TrainingMetricsRecorder(pl.Callback):
    """At each training epoch's end, log the SiftingDataloader's ``stats()`` as ``sifting/<name>``.

    The values go to the LightningModule's loggers (``log_dict``) and to ``self.history``, one dict
    per epoch: steps, samples seen / kept, keep rate, scoring seconds and share of wall time. A run
    whose train loader is not a SiftingDataloader records nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = _find_sifting_loader(trainer.train_dataloader)
        if loader is None:
            return
        stats = {k: float(v) for k, v in loader.stats().items() if isinstance(v, (int, float))}
        self.history.append({"epoch": float(trainer.current_epoch), **stats})
        pl_module.log_dict({f"sifting/{k}": v for k, v in stats.items()}, on_epoch=True, sync_dist=False)
