"""Run directories: what scilm may write and delete in ``--out``, and one run at a time.

Three rules keep a user's files safe:

* **Ownership.** A directory becomes a run directory when scilm creates it, or adopts it empty
  (or with ``overwrite``), and writes :data:`OWNER_FILE` into it. A non-empty directory without
  that file is someone else's and is refused unless the user passes ``overwrite``. Each
  checkpoint scilm starts holds :data:`OWNED` before anything else is written into it; scilm
  deletes a checkpoint only when it holds that file, and ``checkpoints/`` itself only when empty.
  Files scilm did not create are never deleted, not even with ``overwrite``.
* **One run per directory.** :func:`acquire_lock` takes an exclusive ``flock`` on
  :data:`LOCK_FILE` for the run's life (re-entrant within one process) and records pid and host
  in it. The kernel drops the lock when its process dies, so a killed run leaves no stale lock;
  where the file system has no ``flock`` (some network mounts), a lock file whose recorded pid
  is dead on this host is taken over, one on another host is reported.
* **Writes fail in one line.** A full disk or read-only directory surfaces as a
  :class:`~scilm.errors.ScilmError` naming the path and the cause (:func:`writing`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from scilm.errors import ScilmError
from scilm.io import USER_OS_ERRORS, describe_os_error, write_json_atomic, writing  # noqa: F401

log = logging.getLogger(__name__)

OWNER_FILE = ".scilm-run.json"  # in --out: scilm created (or was allowed to adopt) this directory
OWNED = ".scilm-owned"  # in a checkpoint directory: scilm created it
LOCK_FILE = ".scilm.lock"
_held: dict[Path, int] = {}  # lock path -> open file descriptor holding the flock


def is_owned_run(out: Path) -> bool:
    """Whether ``out`` holds a run scilm wrote (its owner file, or an older scilm's metrics.json)."""
    return (out / OWNER_FILE).is_file()


def _foreign_entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in (OWNER_FILE, LOCK_FILE))


def check_claim(out: Path, overwrite: bool) -> None:
    """Raise ScilmError if ``out`` is a file, or a non-empty directory scilm did not create and
    ``overwrite`` is false. Writes nothing."""
    if out.exists() and not out.is_dir():
        raise ScilmError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and not is_owned_run(out):
        foreign = _foreign_entries(out)
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ScilmError(f"--out {out}: not empty and not a scilm run directory (holds {shown}); "
                             "choose a new or empty directory, or pass --overwrite to write into it "
                             "(scilm never deletes files it did not create)")
        # even with overwrite: what a run writes at its end must not replace someone else's files
        taken = [name for name in RUN_OUTPUTS if (out / name).exists()]
        if taken and not _written_by_scilm(out):
            raise ScilmError(f"--out {out}: holds {', '.join(taken)}, which scilm did not create and a run would "
                             "replace; move them away or choose another --out")


RUN_OUTPUTS = ("model", "adapter", "metrics.json")  # what a finished run writes into --out


def _written_by_scilm(out: Path) -> bool:
    """A run directory from a scilm version that did not write :data:`OWNER_FILE` yet: its
    metrics.json names scilm's version."""
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and "scilm" in (metrics.get("versions") or {})


def claim(out: Path, overwrite: bool) -> None:
    """Make ``out`` a run directory (created if needed, :data:`OWNER_FILE` written).

    Raises ScilmError as :func:`check_claim` does, or when ``out`` cannot be written.
    """
    check_claim(out, overwrite)
    with writing("cannot create the run directory"):
        out.mkdir(parents=True, exist_ok=True)
        if not is_owned_run(out):
            write_json_atomic(out / OWNER_FILE, {"created_by": "scilm", "created_at": time.time()})


def _lock_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _busy(out: Path, info: dict) -> ScilmError:
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}" if info else "another process"
    return ScilmError(f"--out {out}: another scilm run is using this directory ({who}); wait for it to end "
                      "or choose another --out")


def acquire_lock(out: Path) -> None:
    """Hold ``out/.scilm.lock`` until :func:`release_lock` or process exit (re-entrant in-process).

    Raises ScilmError when another live process holds it.
    """
    path = (out / LOCK_FILE).resolve()
    if path in _held:
        return
    with writing("cannot create the run's lock file"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(out, _read_lock(path)) from None
    except OSError as exc:  # no flock here (some network file systems): pid/host check instead
        os.close(fd)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        fd = _acquire_by_pid(out, path)
    previous = _read_lock(path)
    if previous.get("pid") not in (None, os.getpid()):
        log.info("%s: the run that held it before (pid %s on %s) has ended", path.name, previous.get("pid"),
                 previous.get("host"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_lock_info()).encode(), 0)
    _held[path] = fd


def _acquire_by_pid(out: Path, path: Path) -> int:
    info = _read_lock(path)
    if info and info.get("pid") != os.getpid():
        same_host = info.get("host") == socket.gethostname()
        if not same_host or _pid_alive(int(info.get("pid", 0))):
            raise _busy(out, info)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def release_lock(out: Path) -> None:
    """Let another run use ``out`` (the lock file stays; only its lock is dropped)."""
    path = (out / LOCK_FILE).resolve()
    fd = _held.pop(path, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def release_all() -> None:
    """Release every run lock this process holds (at exit)."""
    for path in list(_held):
        release_lock(path.parent)


def mark_owned(checkpoint: Path) -> None:
    """Create ``checkpoint`` and mark it as scilm's before anything is written into it.

    Raises ScilmError if a non-empty directory of that name exists that scilm did not create.
    """
    if checkpoint.exists() and not (checkpoint / OWNED).is_file() and any(checkpoint.iterdir()):
        raise ScilmError(f"{checkpoint}: exists and was not created by scilm; move it away (scilm will not "
                         "write into or delete it)")
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / OWNED).touch()


def is_owned(path: Path) -> bool:
    """Whether scilm created ``path`` (its ``.scilm-owned`` marker): only such paths are ever deleted."""
    return (path / OWNED).is_file()


def remove_owned(path: Path) -> bool:
    """Delete ``path`` if scilm created it (its :data:`OWNED` file); returns whether it did."""
    if not is_owned(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


