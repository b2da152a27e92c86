"""The Selective-Backprop rule as pure, vectorised functions (no per-sample Python loops).

A sample is kept with probability ``percentile(loss within the recent history) ** beta``. When
losses are iid and continuous the percentile is uniform on (0, 1), so the expected kept fraction
is E[U**beta] = 1/(1+beta).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scilm.errors import ScilmError


@dataclass
class LossHistory:
    """A ring buffer of the most recent losses (CPU float32).

    ``values[:size]`` hold the losses (in ring order, which the percentile does not need);
    ``pos`` is where the next loss goes.
    """

    values: torch.Tensor  # (capacity,)
    size: int = 0
    pos: int = 0

    @classmethod
    def empty(cls, capacity: int) -> LossHistory:
        """A history of ``capacity`` slots, none filled. Raises ScilmError when ``capacity`` < 1."""
        if capacity < 1:
            raise ScilmError(f"loss history capacity must be >= 1, got {capacity}")
        return cls(torch.zeros(capacity, dtype=torch.float32))

    @property
    def capacity(self) -> int:
        """Slots in the ring buffer (losses kept at most)."""
        return self.values.numel()

    def recent(self) -> torch.Tensor:
        """The losses held, ``(size,)``, in slot order."""
        return self.values[: self.size]

    def state_dict(self) -> dict:
        """Values, size and write position: what a checkpoint needs."""
        return {"values": self.values.clone(), "size": self.size, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values. Raises ScilmError when the capacity differs."""
        if state["values"].numel() != self.capacity:
            raise ScilmError(f"saved loss history has {state['values'].numel()} slots, this one {self.capacity}")
        self.values.copy_(state["values"])
        self.size, self.pos = int(state["size"]), int(state["pos"])


def push_losses(history: LossHistory, losses: torch.Tensor) -> LossHistory:
    """Append ``losses`` (n,) to the ring buffer in place, oldest overwritten first; returns it."""
    losses = losses.detach().reshape(-1).to("cpu", torch.float32)
    cap = history.capacity
    if losses.numel() >= cap:  # only the newest `cap` survive
        history.values.copy_(losses[-cap:])
        history.size, history.pos = cap, 0
        return history
    n = losses.numel()
    slots = (history.pos + torch.arange(n)) % cap
    history.values[slots] = losses
    history.pos = (history.pos + n) % cap
    history.size = min(history.size + n, cap)
    return history


def percentile_in(losses: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mid-rank percentile in [0, 1] of each loss among ``reference`` (ties count half)."""
    if reference.numel() == 0:
        return torch.full_like(losses, 0.5, dtype=torch.float32)
    ref, _ = reference.sort()
    below = torch.searchsorted(ref, losses, right=False)
    up_to = torch.searchsorted(ref, losses, right=True)
    return (below + up_to).float() / (2.0 * ref.numel())


def keep_probability(percentiles: torch.Tensor, beta: float) -> torch.Tensor:
    """Selective-Backprop: P(keep) = percentile ** beta."""
    return percentiles.clamp(0.0, 1.0).pow(beta)


def select_by_loss(losses: torch.Tensor, history: LossHistory, beta: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Push ``losses`` (n,) into ``history`` and return the boolean keep mask (n,) on CPU.

    Each loss is ranked against the history *including* the current batch, so the very first batch
    is ranked among itself. Non-finite losses are always kept and not recorded.
    """
    losses = losses.detach().reshape(-1).to("cpu", torch.float32)
    finite = torch.isfinite(losses)
    push_losses(history, losses[finite])
    prob = keep_probability(percentile_in(losses, history.recent()), beta)
    prob = torch.where(finite, prob, torch.ones_like(prob))
    # always draw n numbers so the generator advances the same way whatever the losses were
    return torch.rand(losses.numel(), generator=generator) < prob
