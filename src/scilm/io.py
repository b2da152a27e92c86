"""Writing the user's output files: whole or not at all, never over an input, never half-written.

Every file scilm writes for a user (predictions, embeddings, generated text, metrics, converted
data sets, run directories) goes through this module, which imports nothing else of scilm's but
its error type, so every layer may use it:

* :func:`atomic_output` yields a temporary path beside the target; the target is replaced only
  when the block ends without an error, and the temporary file is removed in every case.
* The target may not be a directory, nor the same file as one of the command's inputs (``scilm
  predict --data x.csv --out x.csv`` would otherwise replace the input by its predictions).
* A full disk or read-only directory is one :class:`~scilm.errors.ScilmError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scilm.errors import ScilmError

# Errors a user can act on (space, permissions, read-only mounts): one line, not a traceback.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def describe_os_error(exc: OSError, what: str = "cannot write") -> str:
    """``'<path>: cannot write (No space left on device)'`` from an OSError."""
    where = exc.filename or "--out"
    return f"{where}: {what} ({exc.strerror or exc})"


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an OSError the user can act on (disk full, read-only, permissions) into a ScilmError.

    ``what`` completes the message, e.g. ``"cannot write checkpoint-20; earlier checkpoints are intact"``.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        raise ScilmError(describe_os_error(exc, what)) from None


def check_output(out: Path, inputs: Iterable[str | Path | None] = (), option: str = "--out") -> Path:
    """``out`` as a writable file target: not a directory, not one of ``inputs``.

    Raises ScilmError naming ``option`` and the path.
    """
    out = Path(out)
    if out.is_dir():
        raise ScilmError(f"{option} {out}: is a directory; give a file name")
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if source.exists() and out.exists() and os.path.samefile(source, out):
            raise ScilmError(f"{option} {out}: is also an input of this command; choose another output file")
    return out


@contextlib.contextmanager
def atomic_output(out: str | Path, inputs: Iterable[str | Path | None] = (), option: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on success it replaces ``out``, on any error it is removed.

    The temporary name keeps ``out``'s suffix (numpy and pyarrow add or check suffixes). Raises
    ScilmError when ``out`` is a directory or one of ``inputs``, or cannot be written.
    """
    out = check_output(Path(out), inputs, option)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        with writing("cannot write"):
            out.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(out: str | Path, text: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write ``text`` (UTF-8) to ``out`` whole or not at all; see :func:`atomic_output`."""
    with atomic_output(out, inputs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out)


def write_jsonl_atomic(out: str | Path, rows: Iterable[dict], inputs: Iterable[str | Path | None] = ()) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), whole or not at all."""
    with atomic_output(out, inputs) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(out)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that ``path`` holds either the old file or the whole new one, never half.

    The new file is flushed to disk before it replaces the old one (a crash right after the
    rename still finds it whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed (e.g. disk full)


def replace_dir_atomic(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one is removed only after the swap."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
