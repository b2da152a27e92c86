"""scilm.distributed under a real process group (2 CPU processes, gloo): rank, world size, broadcast.

An Accelerate PartialState created with default arguments beside the group must not change the
answers (it reported rank 0 of 1 on every process when scilm asked it)."""

from __future__ import annotations

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from accelerate import PartialState

        PartialState()  # created as a notebook or another library might, not by the Trainer

        from scilm import distributed

        value = distributed.broadcast_object({"from": distributed.rank()} if distributed.is_main_process() else None)
        total = distributed.all_reduce([float(distributed.rank() + 1)])[0]
        distributed.barrier()
        results[rank] = (distributed.rank(), distributed.world_size(), distributed.active_world(), value, total)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_rank_world_size_and_broadcast_come_from_the_process_group(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == (0, 2, (0, 2), {"from": 0}, 3.0)
    assert results[1] == (1, 2, (1, 2), {"from": 0}, 3.0)
