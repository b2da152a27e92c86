"""Request limits and validation: every bad input becomes a :class:`RequestError` (a JSON 4xx).

The checks run in the order a hostile request meets them: body size (before parsing), UTF-8,
JSON (depth bounded by the parser and by the payload's shape), payload shape, number of inputs,
then each input (characters with their position, length against the model's limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


@dataclass
class Payload:
    """A parsed ``{"inputs": ..., "parameters": {...}}`` request."""

    inputs: list[str]
    single: bool  # "inputs" was one string, not a list
    parameters: dict[str, Any] = field(default_factory=dict)


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


def parse_payload(data: Any, max_inputs: int) -> Payload:
    """The HF inference payload: ``inputs`` a string or a list of strings, ``parameters`` a flat dict."""
    if isinstance(data, str):  # a bare JSON string is what some clients send
        data = {"inputs": data}
    if not isinstance(data, dict) or "inputs" not in data:
        raise RequestError(422, 'expected a JSON object with "inputs" (a string or a list of strings)')
    unknown = set(data) - {"inputs", "parameters", "options"}
    if unknown:
        raise RequestError(422, f"unknown field(s) {sorted(unknown)}; expected 'inputs' and 'parameters'")
    inputs, single = data["inputs"], isinstance(data["inputs"], str)
    if single:
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise RequestError(422, '"inputs" must be a string or a list of strings')
    if not inputs:
        raise RequestError(422, '"inputs" is an empty list')
    if len(inputs) > max_inputs:
        raise RequestError(413, f"too many inputs: {len(inputs)} (at most {max_inputs} per request)")
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            raise RequestError(422, f"inputs[{i}] is {type(item).__name__}, expected a string")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(422, '"parameters" must be an object')
    for key, value in parameters.items():
        if isinstance(value, (dict, list)):
            raise RequestError(422, f"parameters.{key}: expected a number, string or null")
    return Payload(inputs=inputs, single=single, parameters=parameters)


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
    """Only SMILES characters (no spaces): the position of the first other one is reported."""
    for position, char in enumerate(text, start=1):
        if char not in SMILES_CHARS:
            raise RequestError(422, f"{where}: invalid SMILES character {describe_char(char)} at position {position}")


def check_text(text: str, where: str) -> None:
    """Free text (descriptions, paragraphs, prompts): printable characters, bounded length."""
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(422, f"{where}: {len(text)} characters is over the limit of {MAX_TEXT_CHARS}")
    for position, char in enumerate(text, start=1):
        if not (char.isprintable() or char in "\n\t"):
            raise RequestError(422, f"{where}: control character {describe_char(char)} at position {position}")


def clean_source(raw: str, where: str, task: str | None) -> str:
    """The seq2seq source: ``PROMPTS[task] + " " + input`` when a task is named, else the raw prompt."""
    text = raw.strip()
    if not text:
        raise RequestError(422, f"{where}: empty input")
    check_text(text, where)
    if task is None:
        return text
    if task in SMILES_TASKS:
        check_smiles_chars(text, where)
    return f"{PROMPTS[task]} {text}"


def int_parameter(parameters: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = parameters.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(422, f"parameters.{name}: expected an integer from {low} to {high} (got {value!r})")
    return value


def task_parameter(parameters: dict) -> str | None:
    task = parameters.get("task")
    if task is None:
        return None
    if task not in PROMPTS:
        raise RequestError(422, f"parameters.task: unknown task {task!r}; tasks are: {', '.join(PROMPTS)}")
    return task
