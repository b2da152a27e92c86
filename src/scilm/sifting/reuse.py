"""The "reuse" policy (InfoBatch-like): no scoring pass; reuse each sample's last training loss.

Before an epoch, sample i is kept with probability p_i = max(percentile(its last loss among all
last losses) ** beta, min_keep); samples never seen are always kept (p = 1). A kept sample's loss
is multiplied by 1/p_i, so the epoch's summed loss (and gradient) is unbiased in expectation.
``min_keep`` bounds the weights (at most 1/min_keep); it keeps slightly more than 1/(1+beta).

Use: ``sifter = ReuseLossSifter(len(ds), beta_value=1)``;
``DataLoader(WithIndex(ds), batch_size=B, sampler=ReuseSampler(sifter))``; in the step
``loss = sifter.record(indices, per_sample_losses)`` and ``loss.backward()``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from scilm.errors import ScilmError
from scilm.sifting.selection import keep_probability, percentile_in


def reuse_keep_probability(last_losses: torch.Tensor, beta: float, min_keep: float = 0.1) -> torch.Tensor:
    """(N,) last losses, NaN for never seen -> (N,) keep probabilities (1 for never seen)."""
    seen = torch.isfinite(last_losses)
    prob = torch.ones_like(last_losses, dtype=torch.float32)
    if seen.any():
        known = last_losses[seen].float()
        prob[seen] = keep_probability(percentile_in(known, known), beta).clamp(min=min_keep)
    return prob


class ReuseLossSifter:
    """Per-sample last losses, the epoch's keep plan and the 1/p weights of kept samples."""

    def __init__(self, num_samples: int, beta_value: float = 1.0, min_keep: float = 0.1, seed: int = 0,
                 blind: bool = False):
        if num_samples < 1:
            raise ScilmError(f"num_samples must be >= 1, got {num_samples}")
        if not beta_value > 0:
            raise ScilmError(f"beta_value must be > 0, got {beta_value!r}")
        if not 0 < min_keep <= 1:
            raise ScilmError(f"min_keep must be in (0, 1], got {min_keep!r}")
        self.beta_value, self.min_keep = float(beta_value), float(min_keep)
        self.last_loss = torch.full((num_samples,), float("nan"))
        self.weights = torch.ones(num_samples)
        self.generator = torch.Generator().manual_seed(seed)
        self.planned = self.kept = 0
        # blind: a control that records random numbers instead of losses (same keep rates and weights)
        self.blind = blind
        self._blind_generator = torch.Generator().manual_seed(seed + 104729)

    def plan_epoch(self) -> torch.Tensor:
        """Draw this epoch's kept indices (sorted, long) and set their weights 1/p."""
        prob = reuse_keep_probability(self.last_loss, self.beta_value, self.min_keep)
        keep = torch.rand(prob.numel(), generator=self.generator) < prob
        self.weights = torch.where(keep, 1.0 / prob, torch.zeros_like(prob))
        index = keep.nonzero().reshape(-1)
        self.planned += prob.numel()
        self.kept += index.numel()
        return index

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Store per-sample ``losses`` (n,) of dataset ``indices`` (n,); return the weighted mean loss.

        ``mean_i(w_i * losses_i)``: right for one batch per optimizer step. Under gradient accumulation
        (or per-token losses) use :meth:`record_sums` and divide by the whole window's item count.
        """
        losses = losses.reshape(-1)
        return self.record_sums(indices, losses, torch.ones_like(losses)).sum() / max(losses.numel(), 1)

    def record_sums(self, indices: torch.Tensor, sums: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Store the losses of dataset ``indices`` (n,); return their 1/p-weighted sums (n,).

        ``sums`` (n,): each sample's summed loss over its ``items`` (n,) (1 per sample for a
        classifier, its target tokens for seq2seq). The stored score that ranks a sample next epoch
        is its mean per item, ``sums / items``; the returned ``w_i * sums_i`` are to be summed over
        an optimizer step's window and divided by its item count, so that the step's loss is
        ``sum_i w_i * sum_t l_it / N`` however the window is split into micro-batches.
        """
        indices = torch.as_tensor(indices).reshape(-1).cpu()
        sums, items = sums.reshape(-1), items.reshape(-1)
        if indices.numel() != sums.numel() or items.numel() != sums.numel():
            raise ScilmError(f"got {indices.numel()} indices for {sums.numel()} losses and {items.numel()} counts")
        per_item = sums.detach() / items.detach().clamp(min=1).to(sums.dtype)
        scores = torch.rand(indices.numel(), generator=self._blind_generator) if self.blind else per_item
        self.last_loss[indices] = scores.float().cpu()
        weight = self.weights[indices].clamp(min=1.0)  # samples outside the plan (e.g. first epoch) weigh 1
        return sums * weight.to(sums.device, sums.dtype)

    def stats(self) -> dict[str, float]:
        """Samples planned and kept so far, and the keep rate."""
        return {"samples_planned": self.planned, "samples_kept": self.kept,
                "keep_rate": self.kept / self.planned if self.planned else 1.0}

    def state_dict(self) -> dict:
        """Last losses, 1/p weights, the generator state and counts: what a checkpoint needs."""
        return {"last_loss": self.last_loss.clone(), "weights": self.weights.clone(),
                "rng": self.generator.get_state(), "planned": self.planned, "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values."""
        self.last_loss, self.weights = state["last_loss"].clone(), state["weights"].clone()
        self.generator.set_state(state["rng"])
        self.planned, self.kept = state["planned"], state["kept"]


def record_losses(sifter: ReuseLossSifter, indices: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Function form of ``sifter.record``: store per-sample losses, return the rescaled mean loss."""
    return sifter.record(indices, losses)


class ReuseSampler(Sampler[int]):
    """Yields the kept dataset indices of each epoch (shuffled by the sifter's generator).

    Each ``iter()`` draws a new plan from the losses recorded so far; ``len()`` is the size of the
    current plan (the first one before any iteration), so loaders that ask for a length mid-epoch
    get the epoch's real size and never trigger a plan drawn from stale losses.
    """

    def __init__(self, sifter: ReuseLossSifter, shuffle: bool = True):
        self.sifter, self.shuffle = sifter, shuffle
        self._plan: torch.Tensor | None = None
        self._served = False  # the current plan has been handed out by __iter__ already

    def __len__(self) -> int:
        if self._plan is None:
            self._plan = self.sifter.plan_epoch()
        return self._plan.numel()

    def __iter__(self) -> Iterator[int]:
        if self._plan is None or self._served:
            self._plan = self.sifter.plan_epoch()
        self._served = True
        plan = self._plan
        if self.shuffle:
            plan = plan[torch.randperm(plan.numel(), generator=self.sifter.generator)]
        return iter(plan.tolist())

    @property
    def plan_size(self) -> int:
        """Samples in the current epoch's plan (drawing the first plan if there is none yet)."""
        return len(self)

    def set_epoch(self, epoch: int) -> None:  # the plan already changes every epoch
        """Plan the next epoch's samples (the Trainer calls it at each epoch's start)."""
        pass


class WithIndex(Dataset):
    """``ds[i]`` -> ``(i, ds[i])`` so a training step knows which samples its losses belong to."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]
