"""Smart sifting in a plain PyTorch loop: both policies on a synthetic 2-class problem (CPU, seconds).

1. relative (the original's rule): SiftingDataloader scores each raw batch with an extra forward
   pass and yields batches of the high-loss samples.
2. reuse (InfoBatch-like): no extra pass; the sampler drops low-loss samples using last epoch's
   training losses, and kept losses are rescaled by 1/p.
"""

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from scilm.sifting import (
    LossConfig,
    Loss,
    RelativeProbabilisticSiftConfig,
    ReuseLossSifter,
    ReuseSampler,
    SiftingBaseConfig,
    SiftingDataloader,
    WithIndex,
)

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small runs fastest on one thread

# a noisy linearly separable problem: most samples become easy quickly, some stay hard
x = torch.randn(4000, 16)
y = (x[:, 0] + 0.3 * torch.randn(4000) > 0).long()
dataset = TensorDataset(x, y)


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def accuracy(model):
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


class CrossEntropyPerSample(Loss):
    def loss(self, model, transformed_batch, original_batch=None):
        inputs, labels = transformed_batch
        return F.cross_entropy(model(inputs), labels, reduction="none")  # (n,)


def relative_policy():
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = RelativeProbabilisticSiftConfig(
        beta_value=1, loss_history_length=500,
        loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=30)))
    loader = SiftingDataloader(sift_config=config, orig_dataloader=DataLoader(dataset, batch_size=64, shuffle=True),
                               loss_impl=CrossEntropyPerSample(), model=model, seed=0)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for inputs, labels in loader:  # no len(loader): iterate until the epoch ends
            loss = F.cross_entropy(model(inputs), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    stats = loader.stats()
    print(f"relative: accuracy {accuracy(model):.3f}, kept {stats['keep_rate']:.1%}, "
          f"{stats['steps']} steps, scoring {stats['scoring_share']:.1%} of wall time")
    # loader.state_dict() / load_state_dict() checkpoint the selection state next to the model's
    return accuracy(model)


def reuse_policy():
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sifter = ReuseLossSifter(len(dataset), beta_value=1, seed=0)
    loader = DataLoader(WithIndex(dataset), batch_size=64, sampler=ReuseSampler(sifter))
    for epoch in range(3):
        for index, (inputs, labels) in loader:  # len(loader) works: the sampler plans each epoch
            per_sample = F.cross_entropy(model(inputs), labels, reduction="none")
            loss = sifter.record(index, per_sample)  # stores the losses, returns the 1/p-weighted mean
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"reuse: accuracy {accuracy(model):.3f}, kept {sifter.stats()['keep_rate']:.1%}")
    return accuracy(model)


if __name__ == "__main__":
    assert relative_policy() > 0.85
    assert reuse_policy() > 0.85
