"""SageMaker smart sifting scripts port by imports alone (issue 11, case 7).

``INTERFACE`` is the public interface of the original, name by name, from its PyTorch guide
("Apply SageMaker smart sifting to your PyTorch script"), its Hugging Face guide, its Python SDK
reference and AWS's own example scripts (``smart_sifting.metrics.lightning``). Every entry must
import from the same path with ``smart_sifting`` replaced by ``scilm.sifting`` and accept the
documented arguments by keyword, with the documented defaults. The semantics tests below check
that a custom batch transform really carries the sifting (same answer as the built-in path).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scilm.sifting import (
    ListBatch,
    Loss,
    LossConfig,
    RelativeProbabilisticSiftConfig,
    SiftingBaseConfig,
    SiftingBatchTransform,
    SiftingDataloader,
    TensorBatch,
)
from scilm.errors import ScilmError

REQUIRED = inspect.Parameter.empty

# (original module, name, {argument: documented default, or REQUIRED}); methods as "Class.method".
INTERFACE = [
    ("smart_sifting.sift_config.sift_configs", "RelativeProbabilisticSiftConfig",
     {"beta_value": None, "loss_history_length": None, "loss_based_sift_config": None}),
    ("smart_sifting.sift_config.sift_configs", "LossConfig", {"sift_config": None}),
    ("smart_sifting.sift_config.sift_configs", "SiftingBaseConfig",
     {"sift_delay": 1000, "repeat_delay_per_epoch": False}),
    ("smart_sifting.data_model.data_model_interface", "SiftingBatchTransform", {}),
    ("smart_sifting.data_model.data_model_interface", "SiftingBatchTransform.transform", {"batch": REQUIRED}),
    ("smart_sifting.data_model.data_model_interface", "SiftingBatchTransform.reverse_transform", {None: REQUIRED}),
    ("smart_sifting.data_model.data_model_interface", "SiftingBatch", {}),
    ("smart_sifting.data_model.list_batch", "ListBatch", {"inputs": REQUIRED, "labels": None}),
    ("smart_sifting.data_model.tensor_batch", "TensorBatch", {"inputs": REQUIRED, "labels": None}),
    ("smart_sifting.loss.abstract_sift_loss_module", "Loss", {}),
    ("smart_sifting.loss.abstract_sift_loss_module", "Loss.loss",
     {"model": REQUIRED, "transformed_batch": REQUIRED, "original_batch": None}),
    ("smart_sifting.dataloader.sift_dataloader", "SiftingDataloader",
     {"sift_config": REQUIRED, "orig_dataloader": REQUIRED, "batch_transforms": None, "model": REQUIRED,
      "loss_impl": REQUIRED, "log_batch_data": False, "batch_format_index": None}),
    ("smart_sifting.integrations.trainer", "enable_sifting",
     {"trainer": REQUIRED, "sift_config": REQUIRED, "loss": REQUIRED, "set_epochs": False}),
    ("smart_sifting.metrics.lightning", "TrainingMetricsRecorder", {}),
]


def _resolve(module: str, name: str):
    target = importlib.import_module(module.replace("smart_sifting", "scilm.sifting", 1))
    for part in name.split("."):
        target = getattr(target, part)
    return target


@pytest.mark.parametrize("module, name, arguments", INTERFACE, ids=[f"{m}.{n}" for m, n, _ in INTERFACE])
def test_every_public_name_imports_from_the_mapped_path(module, name, arguments):
    target = _resolve(module, name)
    if not arguments:
        return
    parameters = inspect.signature(target).parameters
    keyword = {p.name: p for p in parameters.values()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    for argument, default in arguments.items():
        if argument is None:  # the name is the subclass's choice (the guide writes list_batch, tensor_batch)
            assert len(keyword) == 1 and next(iter(keyword.values())).default is REQUIRED
            continue
        assert argument in keyword, f"{name} has no keyword argument {argument!r}"
        if default is REQUIRED:
            assert keyword[argument].default is REQUIRED, f"{name}({argument}) should be required"
        elif default is not None:
            assert keyword[argument].default == default, f"{name}({argument}) default"
        else:
            assert keyword[argument].default is not REQUIRED, f"{name}({argument}) should be optional"


def test_the_public_package_exports_the_data_model():
    import scilm.sifting as sifting

    for name in ("SiftingBatch", "SiftingBatchTransform", "ListBatch", "TensorBatch"):
        assert getattr(sifting, name) is _resolve("smart_sifting.data_model", name)


# -- semantics ------------------------------------------------------------------------------------

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.layer(x)


class TupleLoss(Loss):  # the built-in path: the loader's own (inputs, labels) batches
    def loss(self, model, transformed_batch, original_batch=None):
        inputs, labels = transformed_batch
        return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="none")


class ListBatchTransform(SiftingBatchTransform):  # the guide's step 2, verbatim but for the counter
    def __init__(self):
        self.reversed = 0

    def transform(self, batch):
        return ListBatch(batch[0].tolist(), batch[-1].tolist())

    def reverse_transform(self, list_batch):
        self.reversed += 1
        return [torch.tensor(list_batch.inputs), torch.tensor(list_batch.labels)]


class ListLoss(Loss):
    def loss(self, model, transformed_batch, original_batch=None):
        assert isinstance(transformed_batch, ListBatch)
        inputs, labels = torch.tensor(transformed_batch.inputs), torch.tensor(transformed_batch.labels)
        return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="none")


class TensorBatchTransform(SiftingBatchTransform):  # the guide's tensor example
    def transform(self, batch):
        return TensorBatch(batch[0], batch[-1])

    def reverse_transform(self, tensor_batch):
        return [tensor_batch.inputs, tensor_batch.labels]


class TensorLoss(Loss):
    def loss(self, model, transformed_batch, original_batch=None):
        assert isinstance(transformed_batch, TensorBatch)
        return torch.nn.functional.cross_entropy(model(transformed_batch.inputs), transformed_batch.labels,
                                                 reduction="none")


def sift_config(delay=2):
    return RelativeProbabilisticSiftConfig(beta_value=1, loss_history_length=100,
                                           loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=delay)))


def data(n=480, batch=16, collate_fn=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False, collate_fn=collate_fn)


def run(loader):
    return [[t.clone() for t in batch] for batch in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b))


def test_custom_list_batch_transform_gives_the_builtin_answer():
    builtin = run(SiftingDataloader(sift_config(), data(), TupleLoss(), Linear(), seed=4))
    transform = ListBatchTransform()
    custom = run(SiftingDataloader(sift_config=sift_config(), orig_dataloader=data(), batch_transforms=transform,
                                   loss_impl=ListLoss(), model=Linear(), seed=4, log_batch_data=False))
    sifted = len(builtin) - 2  # after the delay every batch is one the transform assembled
    assert same(builtin, custom) and transform.reversed == sifted and sifted > 5
    assert sum(len(b[1]) for b in builtin) < 480 * 0.75  # samples were really dropped


def test_tensor_batch_transform_gives_the_builtin_answer():
    builtin = run(SiftingDataloader(sift_config(), data(), TupleLoss(), Linear(), seed=9))
    custom = run(SiftingDataloader(sift_config(), data(), TensorLoss(), Linear(), seed=9,
                                   batch_transforms=TensorBatchTransform()))
    assert same(builtin, custom)


def test_tensor_batch_pads_joined_sequences():
    a = TensorBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    b = TensorBatch(torch.full((1, 5), 2), torch.full((1, 5), 2))
    joined = TensorBatch.accumulate([a, b.select([0])])
    assert joined.inputs.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert joined.labels[0].tolist() == [1, 1, 1, -100, -100]
    with pytest.raises(ScilmError, match="labels"):
        TensorBatch(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ScilmError, match="2 inputs but 1 labels"):
        ListBatch([1, 2], [1])


def test_batch_format_index_0_sifts_lists_of_samples():
    builtin = run(SiftingDataloader(sift_config(), data(), TupleLoss(), Linear(), seed=2))

    class RecordLoss(Loss):  # batch[i] is sample i: (x, y)
        def loss(self, model, transformed_batch, original_batch=None):
            x = torch.stack([s[0] for s in original_batch])
            y = torch.stack([s[1] for s in original_batch])
            return torch.nn.functional.cross_entropy(model(x), y, reduction="none")

    records = SiftingDataloader(sift_config(), data(collate_fn=list), RecordLoss(), Linear(), seed=2,
                                batch_format_index=0)
    as_tensors = [[torch.stack([s[0] for s in b]), torch.stack([s[1] for s in b])] for b in records]
    assert same(builtin, as_tensors)
    with pytest.raises(ScilmError, match="batch_format_index"):
        SiftingDataloader(sift_config(), data(), TupleLoss(), Linear(), batch_format_index=2)
    with pytest.raises(ScilmError, match="not both"):
        SiftingDataloader(sift_config(), data(), TupleLoss(), Linear(), batch_format_index=0,
                          batch_transforms=ListBatchTransform())


def test_log_batch_data_logs_each_sifted_batch(caplog):
    loader = SiftingDataloader(sift_config(delay=0), data(96, 16), TupleLoss(), Linear(), seed=1, log_batch_data=True)
    with caplog.at_level(logging.INFO, logger="scilm.sifting"):
        out = run(loader)
    lines = [r.getMessage() for r in caplog.records if "losses [" in r.getMessage()]
    assert len(lines) == 6  # one per raw batch
    kept = sum(len(re.search(r"kept \[([^\]]*)\]", line).group(1).split(",")) if "kept []" not in line else 0
               for line in lines)
    assert kept == sum(len(b[1]) for b in out) == loader.stats()["samples_kept"]
    assert all(len(re.search(r"losses \[([^\]]*)\]", line).group(1).split(", ")) == 16 for line in lines)
    caplog.clear()
    quiet = SiftingDataloader(sift_config(delay=0), data(96, 16), TupleLoss(), Linear(), seed=1)
    with caplog.at_level(logging.INFO, logger="scilm.sifting"):
        assert same(run(quiet), out)  # logging changes nothing but the log
    assert not any("losses [" in r.getMessage() for r in caplog.records)


def test_resume_with_a_list_batch_buffer_continues_identically(tmp_path):
    def loader():
        return SiftingDataloader(sift_config(), data(), ListLoss(), Linear(), seed=6,
                                 batch_transforms=ListBatchTransform())

    full = run(loader())
    first = loader()
    it = iter(first)
    head = [[t.clone() for t in next(it)] for _ in range(6)]
    assert first.stats()["samples_pending"] > 0  # kept samples wait in the buffer as a ListBatch
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = loader()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert same(head + run(resumed), full)


def test_enable_sifting_on_a_hugging_face_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    from scilm.sifting.integrations.trainer import enable_sifting

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Linear()

        def forward(self, x, labels=None):
            logits = self.net(x)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    class DictLoss(Loss):
        def loss(self, model, transformed_batch, original_batch=None):
            return torch.nn.functional.cross_entropy(model(transformed_batch["x"])["logits"],
                                                     transformed_batch["labels"], reduction="none")

    g = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(4, generator=g), "labels": torch.tensor(i % 3)} for i in range(96)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    trainer = Trainer(model=Model(), args=args, train_dataset=rows)
    enable_sifting(trainer, sift_config(delay=1), loss=DictLoss(), set_epochs=True)
    result = trainer.train()
    stats = trainer.sifting["loader"].stats()
    assert stats["epochs"] == 2 and stats["samples_seen"] == 2 * 96 - 8  # the delay's batch is not scored
    assert result.global_step == stats["steps"] and stats["samples_kept"] < stats["samples_seen"]


def test_training_metrics_recorder_logs_sifting_counters():
    import pytorch_lightning as pl

    from scilm.sifting.metrics.lightning import TrainingMetricsRecorder

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Linear()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return SiftingDataloader(sift_config(delay=0), data(96, 16), TupleLoss(), self.net, seed=0)

    recorder = TrainingMetricsRecorder()
    trainer = pl.Trainer(max_epochs=2, callbacks=[recorder], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Module())
    assert [h["epoch"] for h in recorder.history] == [0.0, 1.0]
    assert [h["samples_seen"] for h in recorder.history] == [96.0, 192.0]
    assert recorder.history[-1]["keep_rate"] == pytest.approx(recorder.history[-1]["samples_kept"] / 192)
    assert trainer.callback_metrics["sifting/samples_seen"].item() == 192.0
