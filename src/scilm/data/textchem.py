"""Text+Chem T5 data: the five task prompts, the JSONL format, converters from the public sets.

An example is ``{"source": prompt + " " + input, "target": ...}``, one JSON object per line,
exactly as in GT4SD's multitask_text_and_chemistry_t5; the task is read back from the prompt.
Every problem with an input file is a :class:`~scilm.errors.ScilmError` naming file and line;
converters never drop a line silently: each skip is listed in the returned summary.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from scilm.data.textio import open_text
from scilm.errors import ScilmError
from scilm.io import write_jsonl_atomic

PROMPTS = {
    "forward-prediction": "Predict the product of the following reaction:",
    "retrosynthesis": "Predict the reaction that produces the following product:",
    "paragraph-to-actions": "Which actions are described in the following paragraph:",
    "text-to-smiles": "Write in SMILES the described molecule:",
    "smiles-to-caption": "Caption the following SMILES:",
}
TASKS = tuple(PROMPTS)
MOLECULE_TASKS = ("forward-prediction", "retrosynthesis", "text-to-smiles")
_RX_CLASS = re.compile(r"<RX_\d+>")


@dataclass(frozen=True)
class TextChemExample:
    """One seq2seq pair and the task its prompt names (None only if the reader allowed it)."""

    source: str
    target: str
    task: str | None


def make_example(task: str, text: str, target: str) -> TextChemExample:
    """The example for ``task`` with input ``text``: source = prompt + " " + text."""
    return TextChemExample(f"{PROMPTS[task]} {text}", target, task)


def task_of(source: str) -> str | None:
    """The task whose prompt (followed by a space) starts ``source``, or None."""
    for task, prompt in PROMPTS.items():
        if source.startswith(prompt + " "):
            return task
    return None


def input_of(example: TextChemExample) -> str:
    """The source without its prompt."""
    return example.source[len(PROMPTS[example.task]) + 1:] if example.task else example.source


def _parse_line(line: str, where: str, require_task: bool) -> TextChemExample:
    if not line.strip():
        raise ScilmError(f"{where}: empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ScilmError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ScilmError(f"{where}: expected a JSON object with 'source' and 'target'")
    if set(obj) != {"source", "target"}:
        raise ScilmError(f"{where}: expected exactly the fields 'source' and 'target', got {sorted(obj)}")
    for name in ("source", "target"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise ScilmError(f"{where}: '{name}' must be a non-empty string")
    task = task_of(obj["source"])
    if task is None and require_task:
        raise ScilmError(f"{where}: 'source' does not start with one of the five Text+Chem prompts")
    return TextChemExample(obj["source"], obj["target"], task)


def read_jsonl(path: str | Path, require_task: bool = True) -> list[TextChemExample]:
    """Examples of a Text+Chem JSONL file (UTF-8, BOM ignored, optionally ``.gz``); a last line
    without newline is kept."""
    path = Path(path)
    with open_text(path) as handle:  # BOM ignored, .gz read; iterating keeps an unterminated last line
        examples = [_parse_line(line, f"{path}:{number}", require_task)
                    for number, line in enumerate(handle, start=1)]
    if not examples:
        raise ScilmError(f"{path}: no examples")
    return examples


def write_jsonl(path: str | Path, examples: list[TextChemExample], inputs: tuple = ()) -> Path:
    """Write ``source``/``target`` lines whole or not at all (:func:`scilm.io.write_jsonl_atomic`)."""
    return write_jsonl_atomic(path, ({"source": e.source, "target": e.target} for e in examples), inputs)


@dataclass
class ConversionSummary:
    """What a converter read, wrote and skipped (each skip as ``file:line: reason``)."""

    source: str
    lines: int = 0
    examples: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self, max_listed: int = 10) -> dict:
        """The counts as saved in ``summary.json`` (examples per task and split, skipped lines by reason)."""
        reasons = Counter(s.rsplit(": ", 1)[1] for s in self.skipped)
        return {"source": self.source, "lines": self.lines, "examples": self.examples,
                "skipped": len(self.skipped), "skip_reasons": dict(reasons),
                "first_skips": self.skipped[:max_listed]}


Converted = tuple[list[TextChemExample], ConversionSummary]


def _lines(path: Path) -> list[str]:
    """Lines without their line ends (file iteration: no split on Unicode line separators).

    Read through :func:`~scilm.data.textio.open_text`: a byte-order mark is ignored, ``.gz`` read.
    """
    with open_text(path) as handle:
        return [line.rstrip("\n") for line in handle]


def _paired_lines(first: Path, second: Path) -> list[tuple[str, str]]:
    a, b = _lines(first), _lines(second)
    if len(a) != len(b):
        raise ScilmError(f"{first}: {len(a)} lines but {second} has {len(b)}; they must be line-aligned")
    return list(zip(a, b))


def _canonical_or_skip(smiles: str, canonicalize: bool) -> str | None:
    if not canonicalize:
        return smiles
    from scilm.chem.smiles import canonical_smiles

    return canonical_smiles(smiles)


def convert_chebi20(path: str | Path, canonicalize: bool = False) -> Converted:
    """ChEBI-20 TSV (``CID``, ``SMILES``, ``description``) -> smiles-to-caption and text-to-smiles.

    ChEBI-20's literal doubled backslashes ``\\\\`` become ``\\``.
    """
    path = Path(path)
    lines = _lines(path)
    if not lines or lines[0].split("\t") != ["CID", "SMILES", "description"]:
        raise ScilmError(f"{path}:1: expected the header CID<TAB>SMILES<TAB>description")
    summary, examples = ConversionSummary(str(path), lines=len(lines) - 1), []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ScilmError(f"{path}:{number}: expected 3 tab-separated fields, got {len(fields)}")
        smiles, description = fields[1].strip().replace("\\\\", "\\"), fields[2].strip()
        if not smiles or not description:
            summary.skipped.append(f"{path}:{number}: empty SMILES or description")
            continue
        smiles = _canonical_or_skip(smiles, canonicalize)
        if smiles is None:
            summary.skipped.append(f"{path}:{number}: SMILES not parsable by RDKit")
            continue
        examples += [make_example("smiles-to-caption", smiles, description),
                     make_example("text-to-smiles", description, smiles)]
    summary.examples = len(examples)
    return examples, summary


def _untokenize(line: str) -> str:
    """``<RX_1> C C ( = O ) O`` -> ``CC(=O)O``: class token and spaces removed."""
    return "".join(_RX_CLASS.sub(" ", line).split())


def convert_uspto(sources: str | Path, targets: str | Path, canonicalize: bool = False,
                  ) -> Converted:
    """Space-tokenised USPTO pairs (product -> reactants) -> retrosynthesis and forward prediction."""
    sources, targets = Path(sources), Path(targets)
    pairs = _paired_lines(sources, targets)
    summary, examples = ConversionSummary(f"{sources} + {targets}", lines=len(pairs)), []
    for number, (source, target) in enumerate(pairs, start=1):
        product, reactants = _untokenize(source), _untokenize(target)
        if not product or not reactants:
            summary.skipped.append(f"{sources}:{number}: empty product or reactants")
            continue
        product = _canonical_or_skip(product, canonicalize)
        reactants = _canonical_or_skip(reactants, canonicalize)
        if product is None or reactants is None:
            summary.skipped.append(f"{sources}:{number}: SMILES not parsable by RDKit")
            continue
        examples += [make_example("retrosynthesis", product, reactants),
                     make_example("forward-prediction", reactants, product)]
    summary.examples = len(examples)
    return examples, summary


def convert_paragraph2actions(src: str | Path, tgt: str | Path) -> Converted:
    """Line-aligned paragraph2actions ``src-*.txt`` / ``tgt-*.txt`` -> paragraph-to-actions."""
    src, tgt = Path(src), Path(tgt)
    pairs = _paired_lines(src, tgt)
    summary, examples = ConversionSummary(f"{src} + {tgt}", lines=len(pairs)), []
    for number, (paragraph, actions) in enumerate(pairs, start=1):
        if not paragraph.strip() or not actions.strip():
            summary.skipped.append(f"{src}:{number}: empty paragraph or actions")
            continue
        examples.append(make_example("paragraph-to-actions", paragraph.strip(), actions.strip()))
    summary.examples = len(examples)
    return examples, summary


def _group_key(example: TextChemExample) -> tuple[str, str]:
    """Both directions of one pair (caption / text-to-SMILES, retro / forward) share a key."""
    return tuple(sorted((input_of(example), example.target)))


def split_examples(examples: list[TextChemExample], valid_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[TextChemExample]]:
    """Deterministic train/valid/test split by ``seed``; both directions of a pair stay together."""
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise ScilmError("valid and test fractions must be >= 0 and sum to less than 1")
    groups: dict[tuple[str, str], list[TextChemExample]] = {}
    for example in examples:
        groups.setdefault(_group_key(example), []).append(example)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_test, n_valid = round(len(keys) * test_fraction), round(len(keys) * valid_fraction)
    parts = {"test": keys[:n_test], "valid": keys[n_test:n_test + n_valid], "train": keys[n_test + n_valid:]}
    return {name: [e for key in part for e in groups[key]] for name, part in parts.items()}


def convert_textchem(out_dir: str | Path, *, chebi20: str | Path | None = None,
                     uspto: tuple[str | Path, str | Path] | None = None,
                     paragraph2actions: tuple[str | Path, str | Path] | None = None,
                     canonicalize: bool = False, valid_fraction: float = 0.1,
                     test_fraction: float = 0.1, seed: int = 0) -> dict:
    """Convert the given sets, split them, write ``train/valid/test.jsonl``; returns a summary."""
    if chebi20 is None and uspto is None and paragraph2actions is None:
        raise ScilmError("nothing to convert: give a ChEBI-20 TSV, USPTO source/target files "
                         "or paragraph2actions src/tgt files")
    results = []
    if chebi20 is not None:
        results.append(convert_chebi20(chebi20, canonicalize))
    if uspto is not None:
        results.append(convert_uspto(*uspto, canonicalize=canonicalize))
    if paragraph2actions is not None:
        results.append(convert_paragraph2actions(*paragraph2actions))
    examples = [e for found, _ in results for e in found]
    splits = split_examples(examples, valid_fraction, test_fraction, seed)
    out_dir = Path(out_dir)
    sources = (chebi20, *(uspto or ()), *(paragraph2actions or ()))
    files = {name: str(write_jsonl(out_dir / f"{name}.jsonl", part, sources)) for name, part in splits.items()}
    return {
        "inputs": [summary.to_dict() for _, summary in results],
        "examples": len(examples),
        "skipped": sum(len(summary.skipped) for _, summary in results),
        "splits": {name: len(part) for name, part in splits.items()},
        "tasks": dict(Counter(e.task for e in examples)),
        "files": files,
        "canonicalized": canonicalize,
        "seed": seed,
    }
