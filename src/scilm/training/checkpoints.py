"""Checkpoints that a kill can never leave half-valid, and that resume only when intact.

scilm first marks ``checkpoint-N/`` as its own (:func:`scilm.training.rundir.mark_owned`); the
Trainer writes weights, optimizer, scheduler, RNG and trainer state; scilm adds its own state
(sifting, run bookkeeping), flushes every file to disk and, last, renames ``COMPLETE`` into place.
The marker lists every file with its size and SHA-256. Only directories holding that marker count:
a run killed while saving leaves a directory without it, which :func:`latest_complete` skips and
:func:`remove_incomplete` deletes (only if scilm created it). :func:`latest_intact` re-checks the
listed sizes and hashes before a resume and falls back to an older intact checkpoint, saying so;
a damaged file is never half-restored. Rotation runs only after a new marker exists, so one
complete checkpoint always survives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

from scilm.errors import ScilmError
from scilm.io import write_json_atomic
from scilm.training.rundir import is_owned, remove_owned

log = logging.getLogger(__name__)

MARKER = "COMPLETE"  # written last, atomically: its presence means every other file is whole
SCILM_STATE = "scilm_state.json"  # run bookkeeping: eval history, training seconds, skipped batches
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
FAULT_ENV = "SCILM_FAULT_KILL_IN_CHECKPOINT"  # tests only: SIGKILL ourselves mid-save at this step


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-N`` directory name, else None."""
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
    """Whether the checkpoint at ``path`` has its completion marker (written last, after every file)."""
    return (path / MARKER).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    return [p for p in _checkpoints(root) if is_complete(p)]


def latest_complete(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (not verified: see :func:`latest_intact`), else None."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete checkpoint directories scilm created but never completed (a kill mid-save).

    Returns what was removed; a directory scilm did not create is left alone.
    """
    removed = [p for p in _checkpoints(root) if not is_complete(p) and is_owned(p)]
    for path in removed:
        log.warning("removing incomplete %s (the run was stopped while saving it)", path)
        remove_owned(path)
    return removed


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(path: Path) -> dict[str, dict[str, Any]]:
    """``{relative file name: {"size": bytes, "sha256": hex}}`` of every file under ``path`` but the marker."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARKER)
    return {str(p.relative_to(path)): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}


# Files a resumable checkpoint cannot do without (weights are checked separately: several names).
_REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt", SCILM_STATE)


def problems(path: Path) -> list[str]:
    """What is wrong with a complete checkpoint: missing, resized or changed files (empty = intact).

    A marker written before scilm recorded hashes is checked for the files a resume needs.
    """
    try:
        info = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"{MARKER} unreadable"]
    files = info.get("files")
    if not isinstance(files, dict):
        found = [name for name in _REQUIRED if not (path / name).is_file()]
        weights = list(path.glob("*.safetensors")) or list(path.glob("adapter_model*"))
        return [f"{name} missing" for name in found] + ([] if weights else ["model weights missing"])
    issues = []
    for name, expected in files.items():
        item = path / name
        if not item.is_file():
            issues.append(f"{name} missing")
        elif item.stat().st_size != expected.get("size"):
            issues.append(f"{name} is {item.stat().st_size} bytes, expected {expected.get('size')}")
        elif file_digest(item) != expected.get("sha256"):
            issues.append(f"{name} changed since it was saved (hash differs)")
    return issues


def latest_intact(root: Path) -> Path | None:
    """The newest complete checkpoint whose files match its marker, or None if there is none.

    Damaged newer checkpoints are reported and set aside as ``damaged-checkpoint-N`` (kept for
    inspection; no longer resumed from, rotated or deleted by scilm). Raises ScilmError, setting
    nothing aside, when complete checkpoints exist but none is intact. Call it on one process only.
    """
    damaged: list[tuple[Path, list[str]]] = []
    for path in reversed(complete_checkpoints(root)):
        found = problems(path)
        if not found:
            for bad, issues in damaged:
                aside = _set_aside(bad)
                log.warning("%s is damaged (%s); resuming from %s instead (the damaged one is kept as %s)",
                            bad.name, "; ".join(issues[:3]), path.name, aside.name)
            return path
        damaged.append((path, found))
    if damaged:
        listed = "; ".join(f"{bad.name}: {', '.join(issues[:2])}" for bad, issues in damaged[:3])
        raise ScilmError(f"--resume: no intact checkpoint in {root} ({listed}); start over with --overwrite")
    return None


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the ``checkpoint-N`` pattern: never resumed from or deleted."""
    target = path.with_name(f"damaged-{path.name}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"damaged-{path.name}.{number}")
    os.replace(path, target)
    return target


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
    fsync_tree(path)
    write_json_atomic(path / MARKER, {**info, "files": manifest(path)})
    _fsync_dir(path)


def rotate(root: Path, keep: int, protect: Path | str | None = None) -> None:
    """Keep the ``keep`` newest complete checkpoints (and ``protect``, e.g. the best one)."""
    done = complete_checkpoints(root)
    protected = Path(protect).resolve() if protect else None
    surplus = done[:-keep] if keep > 0 else done
    for path in surplus:
        if protected is not None and path.resolve() == protected:
            continue
        if not is_owned(path):
            continue
        (path / MARKER).unlink(missing_ok=True)  # first: a half-deleted checkpoint never counts
        remove_owned(path)


def read_scilm_state(path: Path) -> dict[str, Any]:
    """scilm's own state saved in a checkpoint (step, eval history, loss sums), ``{}`` when absent."""
    state_file = path / SCILM_STATE
    if not state_file.is_file():
        return {}
    try:
        return json.loads(state_file.read_text(encoding="utf-8"))
    except ValueError:
        raise ScilmError(f"{state_file}: not valid JSON; the checkpoint is damaged") from None


def remove_all_owned(root: Path) -> None:
    """Delete every checkpoint scilm created under ``root``, then ``root`` if nothing else is left."""
    for path in _checkpoints(root):
        if is_owned(path):
            (path / MARKER).unlink(missing_ok=True)
            remove_owned(path)
    try:
        root.rmdir()
    except OSError:  # not empty (a file scilm did not create) or already gone
        pass


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
