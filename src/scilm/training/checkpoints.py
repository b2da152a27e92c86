"""Checkpoints that a kill can never leave half-valid.

The Trainer writes ``checkpoint-N/`` (weights, optimizer, scheduler, RNG, trainer state); scilm then
adds its own state (sifting, run bookkeeping), flushes every file to disk and, last, renames
``COMPLETE`` into place. Only directories holding that marker count: a run killed while saving
leaves a directory without it, which :func:`latest_complete` skips and :func:`remove_incomplete`
deletes. Rotation runs only after a new marker exists, so one complete checkpoint always survives.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "COMPLETE"  # written last, atomically: its presence means every other file is whole
SCILM_STATE = "scilm_state.json"  # run bookkeeping: eval history, training seconds, skipped batches
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
FAULT_ENV = "SCILM_FAULT_KILL_IN_CHECKPOINT"  # tests only: SIGKILL ourselves mid-save at this step


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def _checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    try:  # another rank may be deleting old checkpoints meanwhile
        found = [p for p in root.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda p: checkpoint_step(p))


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    return [p for p in _checkpoints(root) if is_complete(p)]


def latest_complete(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete checkpoint directories without a marker (a kill mid-save); returns what was removed."""
    removed = [p for p in _checkpoints(root) if not is_complete(p)]
    for path in removed:
        log.warning("removing incomplete %s (the run was stopped while saving it)", path)
        shutil.rmtree(path, ignore_errors=True)
    return removed


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` (and the directories) to disk."""
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_marker(path: Path, info: dict[str, Any]) -> None:
    """Flush the checkpoint, then atomically add its ``COMPLETE`` marker."""
    from scilm.training.common import write_json_atomic  # common imports this module

    fsync_tree(path)
    write_json_atomic(path / MARKER, info)
    _fsync_dir(path)


def rotate(root: Path, keep: int, protect: Path | str | None = None) -> None:
    """Keep the ``keep`` newest complete checkpoints (and ``protect``, e.g. the best one)."""
    done = complete_checkpoints(root)
    protected = Path(protect).resolve() if protect else None
    surplus = done[:-keep] if keep > 0 else done
    for path in surplus:
        if protected is not None and path.resolve() == protected:
            continue
        (path / MARKER).unlink(missing_ok=True)  # first: a half-deleted checkpoint never counts
        shutil.rmtree(path, ignore_errors=True)


def read_scilm_state(path: Path) -> dict[str, Any]:
    state_file = path / SCILM_STATE
    if not state_file.is_file():
        return {}
    return json.loads(state_file.read_text(encoding="utf-8"))


def maybe_inject_fault(path: Path, step: int) -> None:
    """Tests only: with ``SCILM_FAULT_KILL_IN_CHECKPOINT=<step>``, tear the weights file and die.

    Simulates a kill (OOM killer, preemption) in the middle of writing checkpoint ``step``.
    """
    target = os.environ.get(FAULT_ENV)
    if target is None or int(target) != step:
        return
    for weights in path.glob("*.safetensors"):
        size = weights.stat().st_size
        with open(weights, "r+b") as handle:
            handle.truncate(size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
