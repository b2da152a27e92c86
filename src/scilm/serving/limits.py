"""Request limits and validation: every bad input becomes a :class:`RequestError` (a JSON 4xx).

The checks run in the order a hostile request meets them: body size (before parsing), UTF-8,
JSON (depth bounded by the parser and by the payload's shape), payload shape, number of inputs,
then each input (characters with their position, length against the model's limit). The
payload's shape and its parameters are checked by :mod:`scilm.serving.schema`.
"""

from __future__ import annotations

import json
from typing import Any

from scilm.data.protein import describe_char, normalize_sequence
from scilm.data.textchem import PROMPTS
from scilm.errors import ScilmError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: 64 proteins of 1022 residues need ~70 kB
MAX_INPUTS = 64  # inputs per request (also capped by the queue size)
MAX_TEXT_CHARS = 4000  # characters per seq2seq input, before tokenizing
MAX_NEW_TOKENS = 512  # the Text+Chem demo's max length
MAX_BEAMS = 10  # the Text+Chem demo's beam count

# Characters of SMILES, reaction SMILES (">"), Text+Chem salts ("~") and reaction-class tokens (<RX_n>).
SMILES_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789()[]=#$:/\\.+-@%*~>_<,"
)
SMILES_TASKS = ("forward-prediction", "retrosynthesis", "smiles-to-caption")  # tasks whose input is SMILES


class RequestError(Exception):
    """A client error: ``status`` and a one-line message, sent as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}




def parse_json_body(body: bytes) -> Any:
    """Bytes -> JSON value; non-UTF-8, invalid or absurdly nested JSON is a 400."""
    if not body.strip():
        raise RequestError(400, 'empty body; send JSON like {"inputs": "MKTAYIAK..."}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not UTF-8 text (byte {exc.start}); send JSON") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int strings over Python's digit limit
        raise RequestError(400, f"body is not valid JSON ({exc})") from None


def clean_protein(raw: str, where: str, max_residues: int) -> str:
    """The residues of one input, by the one alphabet policy of every reader, ``predict`` and ``embed``
    (:func:`scilm.data.protein.normalize_sequence`: non-ASCII rejected before upper-casing, the
    character and its position named); its error becomes a 422 with the same message. A sequence
    over ``max_residues`` is a 422 too.
    """
    try:
        seq = normalize_sequence(raw, where)
    except ScilmError as exc:
        raise RequestError(422, str(exc)) from None
    if len(seq) > max_residues:
        raise RequestError(422, f"{where}: sequence of {len(seq)} residues is over the model's limit of {max_residues}")
    return seq


def check_smiles_chars(text: str, where: str) -> None:
    """Only SMILES characters (no spaces); else a 422 RequestError naming ``where`` and the first other
    character's position (1-based)."""
    for position, char in enumerate(text, start=1):
        if char not in SMILES_CHARS:
            raise RequestError(422, f"{where}: invalid SMILES character {describe_char(char)} at position {position}")


def check_text(text: str, where: str) -> None:
    """Free text (descriptions, paragraphs, prompts): printable characters (and newline, tab), at most
    ``MAX_TEXT_CHARS``; else a 422 RequestError naming ``where`` (and the position of a bad character)."""
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(422, f"{where}: {len(text)} characters is over the limit of {MAX_TEXT_CHARS}")
    for position, char in enumerate(text, start=1):
        if not (char.isprintable() or char in "\n\t"):
            raise RequestError(422, f"{where}: control character {describe_char(char)} at position {position}")


def clean_source(raw: str, where: str, task: str | None) -> str:
    """The seq2seq source: ``PROMPTS[task] + " " + input`` when a task is named, else the raw prompt.

    Raises a 422 RequestError naming ``where`` if it is empty, not :func:`check_text`, or (for a task
    taking SMILES) not :func:`check_smiles_chars`.
    """
    text = raw.strip()
    if not text:
        raise RequestError(422, f"{where}: empty input")
    check_text(text, where)
    if task is None:
        return text
    if task in SMILES_TASKS:
        check_smiles_chars(text, where)
    return f"{PROMPTS[task]} {text}"
