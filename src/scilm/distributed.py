"""Which process am I, and the few collectives scilm needs: one module for the whole package.

Once a torch.distributed process group is up (the Trainer, ``accelerate launch`` and ``torchrun``
make one), the answers come from that group; before, from the launcher's environment (``RANK`` /
``WORLD_SIZE``). Asking never creates a group (it would pick a backend before the Trainer's
``ddp_backend`` does). Accelerate's ``PartialState`` is not asked: created by anyone but the
Trainer (e.g. with default arguments beside a CPU run), it does not adopt an existing group and
reports rank 0 of 1 on every process, which would make every rank write and stop broadcasts.

Sifting's collectives (:func:`gather_losses`, :func:`all_reduce`) work on any torch.distributed
backend: every rank gathers every rank's per-sample losses, so the loss history is global and,
with the same seeded generator on every rank, the keep decisions are identical everywhere.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from scilm.errors import ScilmError


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the run (1 when not distributed)."""
    if _group_up():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if _group_up():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def active_world() -> tuple[int, int]:
    """(rank, world size) of the process group that is up; (0, 1) when none is."""
    if _group_up():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes the run's files (global rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if _group_up() and world_size() > 1:
        dist.barrier()


def broadcast_object(value: Any, source: int = 0) -> Any:
    """``value`` of rank ``source`` on every rank (any picklable object made by scilm itself; the
    identity when not distributed)."""
    if not _group_up() or world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def gather_losses(losses: torch.Tensor, pad_to: int) -> list[torch.Tensor]:
    """Each rank's ``(n_r,)`` losses, in rank order, on every rank (``n_r`` may differ, up to ``pad_to``).

    Raises:
        ScilmError: this rank's batch has more than ``pad_to`` samples.
    """
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
    """Elementwise ``op`` ("sum" or "max") of ``values`` over ranks (identity when not distributed).

    ``device``: where the collective runs; NCCL needs the training GPU, gloo the CPU.
    """
    if active_world()[1] == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.tolist()


# ------------------------------------------------------------------------------------------ threads


def physical_cores(cpus: set[int] | None = None, sysfs: str = "/sys/devices/system/cpu") -> int:
    """Physical cores among the CPUs this process may run on (``os.sched_getaffinity``, or ``cpus``).

    Two logical CPUs of one core (SMT / hyper-threading) share its vector units, so a matrix
    multiply gains nothing from the second and loses to the contention; the count is of distinct
    (package, core) pairs read from Linux's ``topology/physical_package_id`` and ``core_id``. Where
    that is unreadable (not Linux), the logical count.
    """
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            with open(f"{sysfs}/cpu{cpu}/topology/physical_package_id") as package, \
                    open(f"{sysfs}/cpu{cpu}/topology/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def threads_per_process(nproc: int = 1, cores: int | None = None) -> int:
    """Intra-op threads for each of ``nproc`` processes on this machine: physical cores // nproc, at
    least 1, so ``--nproc`` processes never oversubscribe the cores between them."""
    cores = physical_cores() if cores is None else cores
    return max(1, cores // max(1, nproc))


def configure_threads() -> int:
    """Set torch's intra-op threads for this process and return the number.

    ``OMP_NUM_THREADS``, when set (by the user, or by scilm's own launcher for each worker), is
    obeyed as torch obeys it; otherwise :func:`threads_per_process` for the launcher's
    ``LOCAL_WORLD_SIZE`` processes on this node (1 outside a launcher).
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
