"""Optional extras: a missing package is one line naming the extra to install, not a traceback.

scilm's core installs without RDKit, the text metrics, the server or Lightning; those come with the
extras of ``pyproject.toml`` (``pip install 'scilm[chem]'``, ``[serve]``, ``[lightning]``). Every
import of one of their packages goes through :func:`optional_extra` (``with
optional_extra("chem"): from rdkit import Chem``) or :func:`require`, which turn a
``ModuleNotFoundError`` for a package of that extra into :class:`MissingExtra`: a
:class:`~scilm.errors.ScilmError` (the CLI prints one line, exit code 2) and an ``ImportError``
(``except ImportError`` keeps working). The CLI also maps any such ``ModuleNotFoundError`` that
escapes an unwrapped import site with :func:`missing_extra`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from scilm.errors import ScilmError

# extra -> top-level modules of its packages (pyproject.toml [project.optional-dependencies], and
# the packages those pull in that scilm imports directly)
EXTRAS: dict[str, tuple[str, ...]] = {
    # sentencepiece + protobuf (top-level "google"): reading the released checkpoints' spiece.model
    "chem": ("rdkit", "nltk", "rouge_score", "Levenshtein", "wn", "sentencepiece", "google"),
    # huggingface_hub is listed for the tests' InferenceClient, but transformers (core) depends on it
    "serve": ("fastapi", "starlette", "uvicorn", "prometheus_client", "httpx", "rdkit"),
    "lightning": ("pytorch_lightning", "lightning_fabric", "lightning_utilities", "torchmetrics"),
    "hdf5": ("h5py",),  # embed --out x.h5
    "fast": ("torchao",),
}


class MissingExtra(ScilmError, ImportError):
    """A package of an optional extra is not installed; the message says what to ``pip install``."""

    def __init__(self, extra: str, module: str):
        super().__init__(f"{module} is not installed; it comes with scilm's optional extra [{extra}]: "
                         f"pip install 'scilm[{extra}]'")
        self.extra, self.module = extra, module


def missing_extra(exc: ModuleNotFoundError, extra: str | None = None) -> MissingExtra | None:
    """The :class:`MissingExtra` for ``exc`` if its module belongs to ``extra`` (any extra if None), else None."""
    top = (exc.name or "").partition(".")[0]
    for name in [extra] if extra else list(EXTRAS):
        if top in EXTRAS[name]:
            return MissingExtra(name, top)
    return None


@contextmanager
def optional_extra(extra: str) -> Iterator[None]:
    """Imports inside the block that fail for a package of ``extra`` raise :class:`MissingExtra`.

    Raises KeyError for an unknown extra; other import errors pass through unchanged.
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; the extras are: {', '.join(EXTRAS)}")
    try:
        yield
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, extra)
        if error is None:
            raise
        raise error from None


def require(extra: str, module: str, script: bool = False) -> ModuleType:
    """``importlib.import_module(module)``, raising :class:`MissingExtra` naming ``extra`` if it is absent.

    ``script=True`` (for example scripts run with ``python``): print the one line to stderr and exit
    with code 2 instead of raising.
    """
    try:
        with optional_extra(extra):
            return importlib.import_module(module)
    except MissingExtra as exc:
        if not script:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
