"""Opening the user's text files the same way everywhere: UTF-8, a byte-order mark ignored, gzip read
transparently, and decoding problems reported as one :class:`~scilm.errors.ScilmError` naming the line.

Every reader of user input (FASTA, CSV/TSV/TXT tables, Text+Chem JSONL and converter inputs, YAML
configs, input lists) opens files through :func:`open_text`, so a file saved by an editor as
"UTF-8 with BOM" reads exactly like the same file without one, and ``x.fasta.gz`` like ``x.fasta``.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from scilm.errors import ScilmError

ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark (EF BB BF) is dropped, not read as a character


def is_gzip(path: str | Path) -> bool:
    """True when the file name ends in ``.gz`` (the content is then read through gzip)."""
    return Path(path).suffix.lower() == ".gz"


def data_suffix(path: str | Path) -> str:
    """The lower-case suffix that names the format: ``x.fasta.gz`` -> ``.fasta``, ``x.CSV`` -> ``.csv``."""
    path = Path(path)
    if is_gzip(path):
        path = path.with_suffix("")
    return path.suffix.lower()


def _locate_bad_utf8(path: Path) -> str:
    """``:LINE: ... at byte B`` for the first byte that is not UTF-8 (read again, only on this error path)."""
    try:
        data = gzip.open(path, "rb").read() if is_gzip(path) else path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except (OSError, EOFError, zlib.error):
        pass
    return f"{path}: not UTF-8 text"


@contextmanager
def open_text(path: str | Path, newline: str | None = None, what: str = "") -> Iterator[TextIO]:
    """Open ``path`` for reading as UTF-8 text (BOM ignored; ``.gz`` decompressed on the fly).

    ``newline`` is passed to :func:`open` (``""`` for the csv module). ``what`` prefixes messages,
    e.g. ``"--input-file "``. Raises :class:`ScilmError` for a missing file, a non-UTF-8 byte (with
    its line) or a damaged gzip stream, whether found on opening or while the caller reads.
    """
    path = Path(path)
    try:
        if is_gzip(path):
            handle = gzip.open(path, "rt", encoding=ENCODING, newline=newline)
        else:
            handle = open(path, encoding=ENCODING, newline=newline)
    except FileNotFoundError:
        raise ScilmError(f"{what}{path}: no such file") from None
    except IsADirectoryError:
        raise ScilmError(f"{what}{path}: is a directory, not a file") from None
    with handle:
        try:
            yield handle
        except UnicodeDecodeError:
            raise ScilmError(what + _locate_bad_utf8(path)) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ScilmError(f"{what}{path}: not a readable gzip file ({exc or type(exc).__name__})") from None


def read_json(path: str | Path, what: str = "") -> dict:
    """A JSON object from a user's file (e.g. ``--fsdp-config``, ``--deepspeed``), BOM ignored.

    Raises :class:`ScilmError` naming the file (and ``what``) when it is missing, not UTF-8, not
    valid JSON (with line and column) or not an object.
    """
    import json

    with open_text(path, what=what) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScilmError(f"{what}{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ScilmError(f"{what}{path}: expected a JSON object of settings")
    return data
