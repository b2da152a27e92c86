"""The collectives sifting needs under data parallelism (torch.distributed, any backend).

Every rank gathers every rank's per-sample losses, so the loss history is global and, with the
same seeded generator on every rank, the keep decisions are identical everywhere: each rank knows
how many samples every other rank kept and the ranks yield batches in lockstep without talking again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from scilm.errors import ScilmError


def active_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_losses(losses: torch.Tensor, pad_to: int) -> list[torch.Tensor]:
    """Each rank's (n_r,) losses, in rank order, on every rank (n_r may differ, up to ``pad_to``)."""
    n = losses.numel()
    if n > pad_to:
        raise ScilmError(f"sifting: a batch of {n} samples is larger than the loader's batch size {pad_to}")
    row = torch.full((pad_to + 1,), float("nan"), device=losses.device, dtype=torch.float32)
    row[0] = n
    row[1:n + 1] = losses.detach().reshape(-1).float()
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return [r[1:int(r[0].item()) + 1].cpu() for r in rows]


def all_reduce(values: list[float], device: torch.device | str = "cpu", op: str = "sum") -> list[float]:
    """Elementwise ``op`` ("sum" or "max") over ranks (identity when not distributed).

    ``device``: where the collective runs; NCCL needs the training GPU, gloo the CPU.
    """
    if active_world()[1] == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.tolist()
