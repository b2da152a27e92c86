"""A script written for SageMaker smart sifting, ported by changing only its imports.

It follows the original's PyTorch guide step by step: the configuration (step 1), a custom batch
transform to ``ListBatch`` and back (step 2), a per-sample ``Loss`` that scores the transformed
batch (step 3) and the ``SiftingDataloader`` with ``batch_transforms`` and ``log_batch_data``
(step 4). The original script imported:
    from smart_sifting.dataloader.sift_dataloader import SiftingDataloader
    from smart_sifting.loss.abstract_sift_loss_module import Loss
    from smart_sifting.sift_config.sift_configs import RelativeProbabilisticSiftConfig, LossConfig, SiftingBaseConfig
    from smart_sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
    from smart_sifting.data_model.list_batch import ListBatch
Each became the same line with ``scilm.sifting`` for ``smart_sifting``; everything else is unchanged.
"""

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from scilm.sifting.dataloader.sift_dataloader import SiftingDataloader
from scilm.sifting.loss.abstract_sift_loss_module import Loss
from scilm.sifting.sift_config.sift_configs import RelativeProbabilisticSiftConfig, LossConfig, SiftingBaseConfig
from scilm.sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
from scilm.sifting.data_model.list_batch import ListBatch

torch.manual_seed(0)
torch.set_num_threads(1)


class MyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                        torch.nn.Linear(64, 3))

    def forward(self, x):
        return self.body(x)


class ListBatchTransform(SiftingBatchTransform):
    def __init__(self):
        self.calls = {"transform": 0, "reverse_transform": 0}

    def transform(self, batch: Any):
        self.calls["transform"] += 1
        inputs = batch[0].tolist()
        labels = batch[-1].tolist()  # assume the last one is the list of labels
        return ListBatch(inputs, labels)

    def reverse_transform(self, list_batch: ListBatch):
        self.calls["reverse_transform"] += 1
        a_batch = [torch.tensor(list_batch.inputs), torch.tensor(list_batch.labels)]
        return a_batch


class SiftingImplementedLoss(Loss):
    def __init__(self):
        self.celoss = torch.nn.CrossEntropyLoss(reduction="none")

    def loss(self, model: torch.nn.Module, transformed_batch: SiftingBatch, original_batch: Any = None):
        device = next(model.parameters()).device
        inputs = torch.tensor(transformed_batch.inputs, device=device)  # scored in the transformed form
        labels = torch.tensor(transformed_batch.labels, device=device)
        return self.celoss(model(inputs), labels)


def train():
    features = torch.randn(3000, 20)
    labels = features[:, :3].argmax(dim=1)
    train_dataloader = DataLoader(TensorDataset(features, labels), batch_size=32, shuffle=True)

    model = MyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    sift_config = RelativeProbabilisticSiftConfig(
        beta_value=3,
        loss_history_length=500,
        loss_based_sift_config=LossConfig(
            sift_config=SiftingBaseConfig(sift_delay=10)
        )
    )
    batch_transform = ListBatchTransform()
    sift_dataloader = SiftingDataloader(
        sift_config=sift_config,
        orig_dataloader=train_dataloader,
        batch_transforms=batch_transform,
        loss_impl=SiftingImplementedLoss(),
        model=model,
        log_batch_data=False
    )

    model.train()
    steps = 0
    for epoch in range(3):
        for inputs, targets in sift_dataloader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            steps += 1
    model.eval()
    with torch.no_grad():
        accuracy = (model(features).argmax(dim=1) == labels).float().mean().item()
    print(f"trained {steps} sifted steps; accuracy {accuracy:.3f}; transform calls {batch_transform.calls}")
    # every raw batch went through transform (those of the delay only to be counted), every sifted
    # batch back through reverse_transform
    assert batch_transform.calls["transform"] == 3 * len(train_dataloader)
    assert batch_transform.calls["reverse_transform"] == steps - 10
    return accuracy


if __name__ == "__main__":
    assert train() > 0.8
