"""Text+Chem T5 data: the five task prompts, the JSONL format, converters from the public sets.

An example is ``{"source": prompt + " " + input, "target": ...}``, one JSON object per line,
exactly as in GT4SD's multitask_text_and_chemistry_t5; the task is read back from the prompt.
One optional field may follow: ``reaction_class``, the USPTO-50K reaction class (1-10, Schneider
et al. 2016) of a forward or retrosynthesis example, kept by ``scilm data textchem
--keep-reaction-class`` from the ``<RX_n>`` token of the Liu et al. 2017 files; evaluation then
reports top-k per class. Training ignores it.
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
_RX_CLASS = re.compile(r"<RX_(\d+)>")
OPTIONAL_FIELDS = ("reaction_class",)


@dataclass(frozen=True)
class TextChemExample:
    """One seq2seq pair, the task its prompt names (None only if the reader allowed it) and, for
    USPTO reactions converted with their class, the reaction class (1-10)."""

    source: str
    target: str
    task: str | None
    reaction_class: int | None = None


def make_example(task: str, text: str, target: str, reaction_class: int | None = None) -> TextChemExample:
    """The example for ``task`` with input ``text``: source = prompt + " " + text."""
    return TextChemExample(f"{PROMPTS[task]} {text}", target, task, reaction_class)


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
    if not {"source", "target"} <= set(obj) <= {"source", "target", *OPTIONAL_FIELDS}:
        raise ScilmError(f"{where}: expected exactly the fields 'source' and 'target' (and optionally "
                         f"{', '.join(repr(f) for f in OPTIONAL_FIELDS)}), got {sorted(obj)}")
    for name in ("source", "target"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise ScilmError(f"{where}: '{name}' must be a non-empty string")
    task = task_of(obj["source"])
    if task is None and require_task:
        raise ScilmError(f"{where}: 'source' does not start with one of the five Text+Chem prompts")
    reaction_class = obj.get("reaction_class")
    if reaction_class is not None and (type(reaction_class) is not int or reaction_class < 1):
        raise ScilmError(f"{where}: 'reaction_class' must be a whole number of at least 1 (got {reaction_class!r})")
    return TextChemExample(obj["source"], obj["target"], task, reaction_class)


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


def _record(example: TextChemExample) -> dict:
    record = {"source": example.source, "target": example.target}
    if example.reaction_class is not None:
        record["reaction_class"] = example.reaction_class
    return record


def write_jsonl(path: str | Path, examples: list[TextChemExample], inputs: tuple = ()) -> Path:
    """Write ``source``/``target`` (and ``reaction_class`` when known) lines whole or not at all
    (:func:`scilm.io.write_jsonl_atomic`)."""
    return write_jsonl_atomic(path, (_record(e) for e in examples), inputs)


@dataclass
class ConversionSummary:
    """What a converter read, wrote and skipped: every skipped line with its file, number and reason."""

    source: str
    lines: int = 0
    examples: int = 0
    skips: list[tuple[str, int, str]] = field(default_factory=list)

    def skip(self, path: str | Path, line: int, reason: str) -> None:
        """Record that line ``line`` (1-based) of ``path`` was left out, and why."""
        self.skips.append((str(path), line, reason))

    @property
    def skipped(self) -> list[str]:
        """Each skip as ``file:line: reason``, in reading order."""
        return [f"{path}:{line}: {reason}" for path, line, reason in self.skips]

    def to_dict(self) -> dict:
        """JSON-ready: counts, skips counted by reason, and every skipped line."""
        return {"source": self.source, "lines": self.lines, "examples": self.examples,
                "skipped": len(self.skips), "skip_reasons": dict(Counter(r for _, _, r in self.skips)),
                "skipped_lines": self.skipped}


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
            summary.skip(path, number, "empty SMILES or description")
            continue
        smiles = _canonical_or_skip(smiles, canonicalize)
        if smiles is None:
            summary.skip(path, number, "SMILES not parsable by RDKit")
            continue
        examples += [make_example("smiles-to-caption", smiles, description),
                     make_example("text-to-smiles", description, smiles)]
    summary.examples = len(examples)
    return examples, summary


def _untokenize(line: str) -> str:
    """``<RX_1> C C ( = O ) O`` -> ``CC(=O)O``: class token and spaces removed."""
    return "".join(_RX_CLASS.sub(" ", line).split())


def _reaction_class(source: str, target: str) -> tuple[int | None, str | None]:
    """The class of a Liu et al. line (``<RX_n>`` first on the source line) and a reason to skip, if any."""
    classes = _RX_CLASS.findall(source)
    if _RX_CLASS.search(target):
        return None, "reaction class token in the target"
    if len(classes) > 1:
        return None, "several reaction class tokens"
    if classes and not source.strip().startswith(f"<RX_{classes[0]}>"):
        return None, "reaction class token not at the start"
    return (int(classes[0]) if classes else None), None


def convert_uspto(sources: str | Path, targets: str | Path, canonicalize: bool = False,
                  keep_reaction_class: bool = False) -> Converted:
    """Space-tokenised USPTO pairs (product -> reactants) -> retrosynthesis and forward prediction.

    The files of Liu et al. 2017 start each source line with the reaction class token ``<RX_n>``
    (1-10); it is removed from the SMILES and, with ``keep_reaction_class``, kept as the examples'
    ``reaction_class``. A line with a class token elsewhere, or several, is skipped with its reason.
    """
    sources, targets = Path(sources), Path(targets)
    pairs = _paired_lines(sources, targets)
    summary, examples = ConversionSummary(f"{sources} + {targets}", lines=len(pairs)), []
    for number, (source, target) in enumerate(pairs, start=1):
        product, reactants = _untokenize(source), _untokenize(target)
        if not product or not reactants:
            summary.skip(sources, number, "empty product or reactants")
            continue
        reaction_class, problem = _reaction_class(source, target)
        if problem:
            summary.skip(sources, number, problem)
            continue
        product = _canonical_or_skip(product, canonicalize)
        reactants = _canonical_or_skip(reactants, canonicalize)
        if product is None or reactants is None:
            summary.skip(sources, number, "SMILES not parsable by RDKit")
            continue
        kept = reaction_class if keep_reaction_class else None
        examples += [make_example("retrosynthesis", product, reactants, kept),
                     make_example("forward-prediction", reactants, product, kept)]
    summary.examples = len(examples)
    return examples, summary


def convert_paragraph2actions(src: str | Path, tgt: str | Path) -> Converted:
    """Line-aligned paragraph2actions ``src-*.txt`` / ``tgt-*.txt`` -> paragraph-to-actions."""
    src, tgt = Path(src), Path(tgt)
    pairs = _paired_lines(src, tgt)
    summary, examples = ConversionSummary(f"{src} + {tgt}", lines=len(pairs)), []
    for number, (paragraph, actions) in enumerate(pairs, start=1):
        if not paragraph.strip() or not actions.strip():
            summary.skip(src, number, "empty paragraph or actions")
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


SPLITS = ("random", "none")
SKIPPED_FILE = "skipped.tsv"
UNSPLIT_FILE = "all.jsonl"


def _skipped_tsv(summaries: list[ConversionSummary]) -> str:
    rows = ["file\tline\treason"] + [f"{path}\t{line}\t{reason}" for summary in summaries
                                      for path, line, reason in summary.skips]
    return "\n".join(rows) + "\n"


def convert_textchem(out_dir: str | Path, *, chebi20: str | Path | None = None,
                     uspto: tuple[str | Path, str | Path] | None = None,
                     paragraph2actions: tuple[str | Path, str | Path] | None = None,
                     canonicalize: bool = False, valid_fraction: float = 0.1,
                     test_fraction: float = 0.1, seed: int = 0, split: str = "random",
                     keep_reaction_class: bool = False) -> dict:
    """Convert the given sets and write them to ``out_dir``; returns a summary (JSON-ready).

    ``split="random"``: ``train/valid/test.jsonl`` by ``seed`` (both directions of a pair on one
    side); ``split="none"``: every example in one file, ``all.jsonl``, in input order (a test set
    converted as it is). ``skipped.tsv`` (``file``, ``line``, ``reason``; header only when nothing
    was skipped) lists every line left out, as does the summary. Raises ScilmError on a bad setting
    or input file, before anything is written.
    """
    if chebi20 is None and uspto is None and paragraph2actions is None:
        raise ScilmError("nothing to convert: give a ChEBI-20 TSV, USPTO source/target files "
                         "or paragraph2actions src/tgt files")
    if split not in SPLITS:
        raise ScilmError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    if keep_reaction_class and uspto is None:
        raise ScilmError("--keep-reaction-class: only USPTO files (--uspto-sources) have reaction classes")
    results = []
    if chebi20 is not None:
        results.append(convert_chebi20(chebi20, canonicalize))
    if uspto is not None:
        results.append(convert_uspto(*uspto, canonicalize=canonicalize, keep_reaction_class=keep_reaction_class))
    if paragraph2actions is not None:
        results.append(convert_paragraph2actions(*paragraph2actions))
    examples = [e for found, _ in results for e in found]
    if split == "none":
        splits = {UNSPLIT_FILE.removesuffix(".jsonl"): examples}
    else:
        splits = split_examples(examples, valid_fraction, test_fraction, seed)
    out_dir = Path(out_dir)
    sources = (chebi20, *(uspto or ()), *(paragraph2actions or ()))
    from scilm.io import write_text_atomic

    files = {name: str(write_jsonl(out_dir / f"{name}.jsonl", part, sources)) for name, part in splits.items()}
    skipped_file = write_text_atomic(out_dir / SKIPPED_FILE, _skipped_tsv([s for _, s in results]), sources)
    return {
        "inputs": [summary.to_dict() for _, summary in results],
        "examples": len(examples),
        "skipped": sum(len(summary.skips) for _, summary in results),
        "skipped_file": str(skipped_file),
        "split": split,
        "splits": {name: len(part) for name, part in splits.items()},
        "tasks": dict(Counter(e.task for e in examples)),
        "files": files,
        "canonicalized": canonicalize,
        "reaction_classes": dict(sorted(Counter(e.reaction_class for e in examples
                                                if e.reaction_class is not None and e.task == "retrosynthesis").items())),
        "seed": seed if split == "random" else None,
    }
