"""Smart sifting with PyTorch Lightning: return a SiftingDataloader from ``train_dataloader``.

Lightning accepts any iterable; it catches the ``TypeError`` of ``len()`` and ends each epoch
when the sifted loader is exhausted. Schedulers that need the step count should be given it
(e.g. ``max_steps``) since ``estimated_stepping_batches`` is unknown for an unsized loader.
"""

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from scilm._extras import require
from scilm.sifting import (
    Loss,
    LossConfig,
    RelativeProbabilisticSiftConfig,
    SiftingBaseConfig,
    SiftingDataloader,
)

pl = require("lightning", "pytorch_lightning", script=True)  # without it: one line naming scilm[lightning]
logging.getLogger("scilm.sifting").setLevel(logging.WARNING)
torch.set_num_threads(1)  # a model this small runs fastest on one thread


class CrossEntropyPerSample(Loss):
    def loss(self, model, transformed_batch, original_batch=None):
        inputs, labels = transformed_batch
        return F.cross_entropy(model(inputs), labels, reduction="none")


class Classifier(pl.LightningModule):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        self.sifter = None
        self._sifting_state = None

    def forward(self, x):
        return self.net(x)

    def train_dataloader(self):
        config = RelativeProbabilisticSiftConfig(
            beta_value=1, loss_history_length=500,
            loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=20)))
        self.sifter = SiftingDataloader(sift_config=config,
                                        orig_dataloader=DataLoader(self.dataset, batch_size=64, shuffle=True),
                                        loss_impl=CrossEntropyPerSample(), model=self)
        if self._sifting_state is not None:  # resuming from a checkpoint
            self.sifter.load_state_dict(self._sifting_state)
        return self.sifter

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss)
        return loss

    def on_train_epoch_end(self):
        self.log("keep_rate", self.sifter.stats()["keep_rate"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    # checkpoints carry the selection state, so a resumed run continues the same selection
    def on_save_checkpoint(self, checkpoint):
        checkpoint["sifting"] = self.sifter.state_dict()

    def on_load_checkpoint(self, checkpoint):  # runs before train_dataloader() on resume
        self._sifting_state = checkpoint.get("sifting")


def main():
    pl.seed_everything(0, verbose=False)
    x = torch.randn(3000, 16)
    y = (x[:, 0] + 0.3 * torch.randn(3000) > 0).long()
    model = Classifier(TensorDataset(x, y))
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    stats = model.sifter.stats()
    print(f"lightning: {trainer.global_step} steps, accuracy {acc:.3f}, kept {stats['keep_rate']:.1%}")
    assert trainer.current_epoch == 3 and acc > 0.85


if __name__ == "__main__":
    main()
