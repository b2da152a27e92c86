"""Issue 16: intra-op threads = physical cores, never oversubscribed under --nproc; OMP_NUM_THREADS obeyed."""

from __future__ import annotations

import torch

from scilm import distributed as D


def fake_sysfs(root, topology: dict[int, tuple[int, int]]):
    """A /sys/devices/system/cpu with cpu{n}/topology/{physical_package_id,core_id}."""
    for cpu, (package, core) in topology.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return str(root)


def test_smt_siblings_count_once(tmp_path):
    # 2 packages x 2 cores x 2 hardware threads: 8 logical CPUs, 4 physical cores (core ids repeat per package)
    topology = {cpu: (cpu // 4, (cpu % 4) // 2) for cpu in range(8)}
    sysfs = fake_sysfs(tmp_path, topology)
    assert D.physical_cores(set(range(8)), sysfs) == 4
    assert D.physical_cores({0, 1}, sysfs) == 1  # an affinity mask of one core's two threads
    assert D.physical_cores({0, 2, 4, 6}, sysfs) == 4


def test_unreadable_topology_counts_logical_cpus(tmp_path):
    assert D.physical_cores({0, 1, 2}, str(tmp_path / "absent")) == 3


def test_processes_share_the_cores_out():
    assert D.threads_per_process(1, cores=8) == 8
    assert D.threads_per_process(3, cores=8) == 2  # 3 x 2 = 6 <= 8: no oversubscription
    assert D.threads_per_process(16, cores=8) == 1


def test_configure_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert D.configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(D, "physical_cores", lambda *a, **k: 6)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # one of torchrun's two workers on this node
        assert D.configure_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert D.configure_threads() == 6
    finally:
        torch.set_num_threads(before)


def test_launchers_give_each_worker_its_share(monkeypatch):
    """``--nproc`` sets OMP_NUM_THREADS for the workers it starts (unless the user did)."""
    import scilm.inference.embed_stream as E

    captured = {}
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # recorded, so the launcher's value is undone afterwards
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(D, "physical_cores", lambda *a, **k: 8)
    monkeypatch.setattr("torch.distributed.run.run", lambda args: captured.setdefault("omp", D.os.environ["OMP_NUM_THREADS"]))
    assert E.launch_embed_workers(4, ["--model", "x", "--data", "y"]) == 0
    assert captured["omp"] == "2"
