"""A script written for SageMaker smart sifting, ported by changing only its imports.

The original script imported:
    from smart_sifting.dataloader.sift_dataloader import SiftingDataloader
    from smart_sifting.loss.abstract_sift_loss_module import Loss
    from smart_sifting.sift_config.sift_configs import RelativeProbabilisticSiftConfig, LossConfig, SiftingBaseConfig
Everything below those lines is unchanged.
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

from scilm.sifting import SiftingDataloader
from scilm.sifting import Loss
from scilm.sifting import RelativeProbabilisticSiftConfig, LossConfig, SiftingBaseConfig

torch.manual_seed(0)
torch.set_num_threads(1)


class MyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                        torch.nn.Linear(64, 3))

    def forward(self, x):
        return self.body(x)


class SiftingImplementedLoss(Loss):
    def __init__(self):
        self.celoss = torch.nn.CrossEntropyLoss(reduction="none")

    def loss(self, model, transformed_batch, original_batch=None):
        device = next(model.parameters()).device
        batch = [t.to(device) for t in transformed_batch]
        outputs = model(batch[0])
        return self.celoss(outputs, batch[1])


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
    sift_dataloader = SiftingDataloader(
        sift_config=sift_config,
        orig_dataloader=train_dataloader,
        loss_impl=SiftingImplementedLoss(),
        model=model
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
    print(f"trained {steps} sifted steps; accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    assert train() > 0.8
