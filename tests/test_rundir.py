"""Run directories (issue 12, items 1-5): scilm deletes only what it created, one run per
directory, damaged checkpoints never half-restored, disk errors in one line, typed settings.

The runs are esm2-tiny on 48 short bundled proteins: 2 epochs of batch 8 are 12 steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEEPLOC_TRAIN, DEEPLOC_VALID, deeploc_slice
from scilm.training import checkpoints, rundir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rundir")
    return (deeploc_slice(root / "train.fasta", DEEPLOC_TRAIN, 24, 60),
            deeploc_slice(root / "valid.fasta", DEEPLOC_VALID, 4, 60))


def args(data, out: Path, *extra: str) -> list[str]:
    train, valid = data
    return ["train", "--data", str(train), "--valid", str(valid), "--model", "esm2-tiny", "--epochs", "2",
            "--batch-size", "8", "--save-every", "4", "--keep-checkpoints", "2", "--out", str(out),
            "--no-progress", *extra]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


# -- 1. ownership ---------------------------------------------------------------------------------

def test_a_foreign_directory_is_refused_and_never_emptied(run_cli, data, tmp_path):
    out = tmp_path / "J"
    (out / "checkpoints" / "checkpoint-3").mkdir(parents=True)  # another tool's checkpoint
    (out / "checkpoints" / "checkpoint-3" / "model.safetensors").write_bytes(b"theirs")
    (out / "checkpoints" / "notes.txt").write_text("mine")
    line = one_line_error(run_cli(*args(data, out)))
    assert "not empty and not a scilm run directory" in line and "--overwrite" in line
    assert not (out / "metrics.json").exists()

    done = run_cli(*args(data, out, "--overwrite"))
    assert done.exit_code == 0, done.stderr[-2000:]
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "checkpoint-3" / "model.safetensors").read_bytes() == b"theirs"
    assert (out / "metrics.json").is_file() and (out / "model" / "model.safetensors").is_file()
    # scilm's own checkpoints (4, 8, 12) are gone, the foreign one stays
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "notes.txt"]


@pytest.mark.slow  # ~7 s: two training runs
def test_a_file_dropped_into_a_scilm_run_survives_overwrite(run_cli, data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*args(data, out)).exit_code == 0
    assert not (out / "checkpoints").exists()  # scilm's own checkpoints dropped, directory with them
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "keep.txt").write_text("mine")
    (out / "mine.csv").write_text("a,b\n")
    again = run_cli(*args(data, out, "--overwrite"))
    assert again.exit_code == 0, again.stderr[-2000:]
    assert (out / "checkpoints" / "keep.txt").read_text() == "mine"
    assert (out / "mine.csv").read_text() == "a,b\n"


def test_a_checkpoint_name_taken_by_a_foreign_directory_is_not_written_into(tmp_path):
    foreign = tmp_path / "checkpoint-4"
    foreign.mkdir()
    (foreign / "theirs.bin").write_bytes(b"x")
    with pytest.raises(Exception, match="not created by scilm"):
        rundir.mark_owned(foreign)
    assert [p.name for p in foreign.iterdir()] == ["theirs.bin"]


def test_incomplete_and_rotated_checkpoints_are_deleted_only_when_owned(tmp_path):
    root = tmp_path / "checkpoints"
    for step, owned, complete in ((5, True, True), (10, True, True), (15, True, False), (20, False, False)):
        path = root / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if owned:
            rundir.mark_owned(path)
        (path / "model.safetensors").write_bytes(b"x")
        if complete:
            checkpoints.write_marker(path, {"global_step": step})
    assert [p.name for p in checkpoints.remove_incomplete(root)] == ["checkpoint-15"]
    checkpoints.rotate(root, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    checkpoints.remove_all_owned(root)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-20"]


# -- 2. one run per directory -------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # ~10 s: two live processes
def test_a_second_run_on_the_same_out_is_refused_while_the_first_lives(run_cli, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.OWNER_FILE).write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / rundir.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line_error(run_cli(*args(data, out)))
        assert f"another scilm run is using this directory (pid {holder.pid} on " in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's lock is stale: the kernel released it, the next run goes ahead
    done = run_cli(*args(data, out))
    assert done.exit_code == 0, done.stderr[-2000:]


def test_without_flock_a_dead_pid_on_this_host_is_stale_a_live_one_is_not(tmp_path, monkeypatch):
    import socket

    path = tmp_path / rundir.LOCK_FILE
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    os.close(rundir._acquire_by_pid(tmp_path, path))  # taken over
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(Exception, match=f"pid {live.pid}"):
            rundir._acquire_by_pid(tmp_path, path)
        path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        with pytest.raises(Exception, match="on elsewhere"):
            rundir._acquire_by_pid(tmp_path, path)
    finally:
        live.kill()
        live.wait()


# -- 3. damaged checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """An uninterrupted run (in a subprocess, like the interrupted one)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run([sys.executable, "-m", "scilm", *args(data, out)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return metrics(out)


@pytest.fixture(scope="module")
def unfinished(data, tmp_path_factory) -> Path:
    """A run killed while writing checkpoint-12: checkpoints 4 and 8 complete."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    result = subprocess.run([sys.executable, "-m", "scilm", *args(data, out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, checkpoints.FAULT_ENV: "12"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [p.name for p in checkpoints.complete_checkpoints(out / "checkpoints")] == ["checkpoint-4", "checkpoint-8"]
    return out


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def garble(path: Path) -> None:
    path.write_bytes(b"{" * path.stat().st_size)  # same size, different content


slow = pytest.mark.slow


@slow  # two subprocess runs set it up (~25 s); the unit test below covers the checks in the quick loop
@pytest.mark.parametrize("damage, file", [
    (truncate, "model.safetensors"),
    pytest.param(truncate, "optimizer.pt", marks=slow),
    (Path.unlink, "optimizer.pt"),
    pytest.param(Path.unlink, "scheduler.pt", marks=slow),
    pytest.param(Path.unlink, "trainer_state.json", marks=slow),
    pytest.param(garble, "trainer_state.json", marks=slow),
])
def test_a_damaged_checkpoint_falls_back_to_the_newest_intact_one(run_cli, unfinished, reference, tmp_path,
                                                                   damage, file, data, caplog):
    out = tmp_path / "run"
    shutil.copytree(unfinished, out)
    damage(out / "checkpoints" / "checkpoint-8" / file)
    result = run_cli(*args(data, out, "--resume"))
    assert result.exit_code == 0, result.stderr[-2000:]
    said = result.stderr + caplog.text
    assert f"checkpoint-8 is damaged ({file}" in said and "resuming from checkpoint-4" in said
    resumed = metrics(out)
    assert resumed["resumed_from_step"] == 4
    for key in ("global_step", "eval_loss", "eval_accuracy", "train_loss"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-7), key


@slow
def test_no_intact_checkpoint_is_one_line_and_nothing_is_deleted(run_cli, unfinished, tmp_path, data):
    out = tmp_path / "run"
    shutil.copytree(unfinished, out)
    for step in (4, 8):
        (out / "checkpoints" / f"checkpoint-{step}" / "optimizer.pt").unlink()
    line = one_line_error(run_cli(*args(data, out, "--resume")))
    assert "no intact checkpoint" in line and "checkpoint-8: optimizer.pt missing" in line
    assert (out / "checkpoints" / "checkpoint-4" / "model.safetensors").is_file()
    assert not (out / "metrics.json").exists()


def test_markers_record_sizes_and_hashes_and_resume_picks_the_newest_intact(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        path = root / f"checkpoint-{step}"
        rundir.mark_owned(path)
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                     checkpoints.SCILM_STATE):
            (path / name).write_bytes(f"{name} at {step}".encode() * 10)
        checkpoints.write_marker(path, {"global_step": step})
    marker = json.loads((root / "checkpoint-12" / checkpoints.MARKER).read_text())
    assert marker["files"]["optimizer.pt"]["size"] == len(b"optimizer.pt at 12") * 10
    assert checkpoints.latest_intact(root).name == "checkpoint-12"
    truncate(root / "checkpoint-12" / "model.safetensors")
    garble(root / "checkpoint-8" / "trainer_state.json")
    assert checkpoints.problems(root / "checkpoint-8") == ["trainer_state.json changed since it was saved (hash differs)"]
    assert checkpoints.latest_intact(root).name == "checkpoint-4"
    assert "checkpoint-12 is damaged (model.safetensors is 115 bytes, expected 230); resuming from checkpoint-4" \
        in caplog.text
    # damaged ones are set aside for inspection, never resumed from, rotated or deleted
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "damaged-checkpoint-12", "damaged-checkpoint-8"]
    assert [p.name for p in checkpoints.complete_checkpoints(root)] == ["checkpoint-4"]
    checkpoints.remove_all_owned(root)
    assert sorted(p.name for p in root.iterdir()) == ["damaged-checkpoint-12", "damaged-checkpoint-8"]
    rundir.mark_owned(root / "checkpoint-4")
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", checkpoints.SCILM_STATE):
        (root / "checkpoint-4" / name).write_bytes(b"x")
    checkpoints.write_marker(root / "checkpoint-4", {"global_step": 4})
    (root / "checkpoint-4" / "scheduler.pt").unlink()
    with pytest.raises(Exception, match="no intact checkpoint .*checkpoint-4: scheduler.pt missing"):
        checkpoints.latest_intact(root)


# -- 4. disk full, read-only ------------------------------------------------------------------------

def test_disk_full_while_saving_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(run_cli, data, tmp_path,
                                                                                     monkeypatch):
    from transformers import Trainer

    original = Trainer._save_checkpoint

    def full_at_step_8(self, model, trial):
        if self.state.global_step == 8:
            target = Path(self.args.output_dir) / "checkpoint-8" / "optimizer.pt"
            target.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return original(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", full_at_step_8)
    out = tmp_path / "run"
    line = one_line_error(run_cli(*args(data, out)))
    assert "checkpoint-8/optimizer.pt: cannot write checkpoint-8; earlier checkpoints are intact " \
           "(No space left on device)" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]  # no partial one left
    assert checkpoints.problems(out / "checkpoints" / "checkpoint-4") == []
    assert not (out / "metrics.json").exists()


def test_a_read_only_out_is_one_line(run_cli, data, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = one_line_error(run_cli(*args(data, out)))
    assert line == f"error: {out}: cannot create the run directory (Read-only file system)"


# -- 5. typed settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, message", [
    ("overwrite: 'false'\n", "overwrite: expected true or false, got the text 'false'"),
    ("resume: 'no'\n", "resume: expected true or false, got the text 'no'"),
    ("lr: '1e-4'\n", "lr: expected a finite number (or null), got the text '1e-4'"),
    ("batch_size: 8.5\n", "batch_size: expected an integer, got 8.5"),
    ("batch_size: 8.0\n", "batch_size: expected an integer, got 8.0"),
    ("epochs: .inf\n", "epochs: expected a finite number, got inf"),
    ("warmup_ratio: .nan\n", "warmup_ratio: expected a finite number, got nan"),
    ("task: [membrane]\n", "task: expected text, got ['membrane']"),
    ("1: 2\n", "setting name 1 is not text"),
    ("lora: 1\n", "lora: expected true or false, got 1"),
    ("learning_rate: 0.1\n", "unknown setting(s): learning_rate"),
])
def test_config_values_are_checked_by_type_naming_the_key(run_cli, tmp_path, yaml_text, message):
    config = tmp_path / "c.yaml"
    config.write_text("data: x.fasta\n" + yaml_text)
    line = one_line_error(run_cli("train", "--config", str(config)))
    assert line == f"error: {config}: {message}"


def test_a_string_false_never_overwrites_a_finished_run(run_cli, data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*args(data, out)).exit_code == 0
    before = (out / "metrics.json").read_bytes()
    config = tmp_path / "c.yaml"
    config.write_text("overwrite: 'false'\n")
    line = one_line_error(run_cli(*args(data, out, "--config", str(config))))
    assert "overwrite: expected true or false" in line
    assert (out / "metrics.json").read_bytes() == before


def test_yaml_numbers_read_as_yaml_1_2_does(tmp_path):
    from scilm.training.config import load_config, read_yaml

    path = tmp_path / "numbers.yaml"
    path.write_text("\ufeffdata: x.fasta\nlr: 1e-4\nwarmup_ratio: 5E-2\nsplit_column: P\nvalid_split: 4\n",
                    encoding="utf-8")
    assert read_yaml(path) == {"data": "x.fasta", "lr": 1e-4, "warmup_ratio": 0.05, "split_column": "P",
                               "valid_split": 4}
    config = load_config(path, {})
    assert (config.lr, config.warmup_ratio, config.valid_split) == (1e-4, 0.05, "4")


# -- outputs of the other commands ------------------------------------------------------------------

def test_outputs_never_replace_an_input_or_a_directory(run_cli, tmp_path, tiny_fastas):
    data = tmp_path / "in.fasta"
    data.write_bytes(tiny_fastas[1].read_bytes())
    before = data.read_bytes()
    for command, out in (("predict", data), ("embed", tmp_path / "in.npy"), ("predict", tmp_path)):
        model = "esm2-tiny-mlm"  # never loaded: the output is checked before any work
        if command == "embed" and out.suffix == ".npy":
            (tmp_path / "in.ids.txt").symlink_to(data)  # the ids file beside it would be the input
        result = run_cli(command, "--model", model, "--data", data, "--out", out)
        line = one_line_error(result)
        assert ("is also an input of this command" in line) or ("is a directory" in line), line
    assert data.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_atomic_output_leaves_the_old_file_when_the_write_fails(tmp_path):
    from scilm.io import atomic_output

    out = tmp_path / "preds.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["preds.csv"]


def test_overwrite_never_replaces_a_model_or_metrics_scilm_did_not_write(run_cli, data, tmp_path):
    out = tmp_path / "theirs"
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text('{"accuracy": 0.9}')
    line = one_line_error(run_cli(*args(data, out, "--overwrite")))
    assert "holds model, metrics.json, which scilm did not create" in line
    assert (out / "model" / "notes.txt").read_text() == "mine" and (out / "metrics.json").read_text() == '{"accuracy": 0.9}'
    # a run directory of an older scilm (no owner file, its metrics.json names scilm) is replaced on request
    legacy = tmp_path / "legacy"
    (legacy / "model").mkdir(parents=True)
    (legacy / "metrics.json").write_text('{"versions": {"scilm": "0.1.0"}}')
    done = run_cli(*args(data, legacy, "--overwrite"))
    assert done.exit_code == 0, done.stderr[-2000:]
    assert (legacy / "model" / "model.safetensors").is_file()
