"""Zero-shot variant-effect scores from an ESM-2 masked language model (ESM-1v's protocol).

For a wild type ``x`` and a mutant with substitutions ``wt_i -> mt_i`` at positions ``i`` in ``M``:

* masked-marginal (default; Meier et al. 2021, "Language models enable zero-shot prediction of the
  effects of mutations on protein function", NeurIPS, eq. 1, as implemented in facebookresearch/esm
  ``examples/variant-prediction/predict.py``, ``--scoring-strategy masked-marginals``)::

      score = sum_{i in M} log p(x_i = mt_i | x with i masked) - log p(x_i = wt_i | x with i masked)

* wild-type-marginal (``wt-marginals`` there)::

      score = sum_{i in M} log p(x_i = mt_i | x) - log p(x_i = wt_i | x)       (no mask)

Each position is masked alone, and a multi-mutant ``A42G:C55T`` adds its positions' log-ratios: the
additive approximation that esm's ``label_row`` and ProteinGym's ``compute_fitness.py`` use (the
other mutations are not applied to the context). So the cost is one masked forward per *distinct
mutated position*, not per mutant: 263 forwards for the 4,996 mutants of the bundled assay.

Proteins longer than the model's window (``W`` residues, by default the length the model was
trained with, 1,022 for ESM-2) are scored on a window of ``W + 2`` tokens of ``<cls> x <eos>``
around each position: centred, clipped at the ends, so it always holds ``W + 2`` tokens (the end
windows keep <cls> or <eos>, middle ones neither). That is ProteinGym's rule for ESM models
(``get_optimal_window`` in ``proteingym/utils/scoring_utils.py``, used by
``proteingym/baselines/esm/compute_fitness.py``; esm's own ``predict.py`` does not window). The
wild-type-marginal uses the same windows (one unmasked forward per distinct window).

Positions are 1-based on the given wild type, or numbered from ``offset`` (esm's ``--offset-idx``:
the number of the wild type's first residue).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scilm.data.protein import VALID_RESIDUES, normalize_sequence, read_proteins
from scilm.data.textio import data_suffix, open_text
from scilm.errors import ScilmError
from scilm.inference.progress import progress_bar
from scilm.io import atomic_output, check_output

log = logging.getLogger(__name__)

SCORINGS = ("masked-marginal", "wt-marginal")
_SUBSTITUTION = re.compile(r"^([A-Z])(-?[0-9]+)([A-Z])$")


@dataclass(frozen=True)
class Substitution:
    """One substitution: residues ``wt`` -> ``mt`` at ``index`` (0-based in the wild type), as written."""

    wt: str
    index: int
    mt: str
    text: str


def parse_mutant(text: str, wild_type: str, offset: int = 1, where: str = "") -> tuple[Substitution, ...]:
    """``"A42G"`` or ``"A42G:C55T"`` -> the substitutions, checked against ``wild_type``.

    ``offset`` is the number of the wild type's first residue (1: positions are 1-based on it).
    Raises ScilmError, prefixed by ``where`` (e.g. ``"mutants.csv:7"``) and naming the mutation, for
    a malformed string, a position outside the wild type, a wild-type residue that does not match,
    a mutant residue outside the alphabet, or a position named twice.
    """
    prefix = f"{where}: " if where else ""
    text = text.strip()
    if not text:
        raise ScilmError(f"{prefix}empty mutant")
    subs: list[Substitution] = []
    for part in text.split(":"):
        match = _SUBSTITUTION.match(part.strip())
        if not match:
            raise ScilmError(f"{prefix}mutation {text!r}: {part!r} is not of the form A42G (wild-type residue, "
                             "position, mutant residue; several joined by ':')")
        wt, number, mt = match.group(1), int(match.group(2)), match.group(3)
        index = number - offset
        if not 0 <= index < len(wild_type):
            raise ScilmError(f"{prefix}mutation {text!r}: position {number} is outside the wild type (positions "
                             f"{offset}..{offset + len(wild_type) - 1}; --offset {offset})")
        if wild_type[index] != wt:
            raise ScilmError(f"{prefix}mutation {text!r}: the wild type has {wild_type[index]} at position {number}, "
                             f"not {wt} (check --wild-type and --offset {offset})")
        if mt not in VALID_RESIDUES:
            raise ScilmError(f"{prefix}mutation {text!r}: {mt!r} is not a residue (allowed: the 20 standard amino "
                             "acids and X B Z U O)")
        if any(s.index == index for s in subs):
            raise ScilmError(f"{prefix}mutation {text!r}: position {number} is named twice")
        subs.append(Substitution(wt, index, mt, part.strip()))
    return tuple(subs)


def apply_mutant(wild_type: str, substitutions: Sequence[Substitution]) -> str:
    """The wild type with ``substitutions`` (from :func:`parse_mutant`, so already checked) applied."""
    residues = list(wild_type)
    for sub in substitutions:
        residues[sub.index] = sub.mt
    return "".join(residues)


def token_window(token_index: int, n_tokens: int, window_tokens: int) -> tuple[int, int]:
    """[start, end) of ``window_tokens`` tokens around ``token_index`` of ``n_tokens`` (all of them if
    they fit): centred, clipped at the ends. ProteinGym's ``get_optimal_window`` (same result for an
    even window, e.g. ESM-2's 1,024 tokens; for an odd one the extra token goes right, so every
    window has the same length and windows batch without padding)."""
    if n_tokens <= window_tokens:
        return 0, n_tokens
    start = min(max(token_index - window_tokens // 2, 0), n_tokens - window_tokens)
    return start, start + window_tokens


def plan_forwards(indices: Sequence[int], n_residues: int, scoring: str, window: int
                  ) -> list[tuple[tuple[int, int], list[int]]]:
    """The forwards needed: (token window [start, end), the 0-based indices read from it), in order.

    masked-marginal: one per distinct index (that index masked); wt-marginal: one per distinct
    window, shared by the indices whose window it is.
    """
    jobs: list[tuple[tuple[int, int], list[int]]] = []
    for index in sorted(set(indices)):
        span = token_window(index + 1, n_residues + 2, window + 2)
        if scoring == "wt-marginal" and jobs and jobs[-1][0] == span:
            jobs[-1][1].append(index)  # windows move with the index, so equal windows are neighbours
        else:
            jobs.append((span, [index]))
    return jobs


@torch.inference_mode()
def position_log_probs(model, tokenizer, wild_type: str, indices: Sequence[int], scoring: str = "masked-marginal",
                       window: int = 1022, batch_size: int = 32, progress: bool = False) -> dict[int, np.ndarray]:
    """For each 0-based ``index`` of ``wild_type``, the model's log-probabilities (vocab,) at that residue.

    masked-marginal: one forward per index, the residue masked (``batch_size`` such forwards at
    once: all have the same length, so no padding). wt-marginal: one unmasked forward per distinct
    window (one in all when the protein fits). ``window``: residues per forward (see the module
    docstring). float64 arrays over the tokenizer's vocabulary. ``progress``: a bar counting forwards
    (stderr, a terminal only). Raises ScilmError for an unknown ``scoring``, ``window`` < 1, or a
    tokenizer that does not give one token per residue.
    """
    if scoring not in SCORINGS:
        raise ScilmError(f"--scoring must be one of {', '.join(SCORINGS)} (got {scoring!r})")
    if window < 1:
        raise ScilmError(f"--window must be at least 1 (got {window})")
    tokens = torch.tensor(tokenizer(wild_type)["input_ids"])  # (L + 2,): <cls> residues <eos>
    if len(tokens) != len(wild_type) + 2:
        raise ScilmError(f"--model: its tokenizer does not give one token per residue ({len(tokens)} tokens for "
                         f"{len(wild_type)} residues); score-variants needs an ESM-2 tokenizer")
    mask_id = tokenizer.mask_token_id
    device = next(model.parameters()).device
    jobs = plan_forwards(indices, len(wild_type), scoring, window)
    out: dict[int, np.ndarray] = {}
    with progress_bar(len(jobs), f"score-variants ({scoring})", progress, unit="forwards") as bar:
        for batch in (jobs[k:k + batch_size] for k in range(0, len(jobs), batch_size)):
            inputs = torch.stack([tokens[start:end] for (start, end), _ in batch])  # (B, T)
            if scoring == "masked-marginal":
                for row, ((start, _), (index,)) in enumerate(batch):
                    inputs[row, index + 1 - start] = mask_id
            logits = model(input_ids=inputs.to(device), attention_mask=torch.ones_like(inputs).to(device)).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().double()  # (B, T, V)
            for row, ((start, _), read) in enumerate(batch):
                for index in read:
                    out[index] = log_probs[row, index + 1 - start].numpy()
            bar.update(len(batch))
    return out


def score_mutants(model, tokenizer, wild_type: str, mutants: Sequence[Sequence[Substitution]],
                  scoring: str = "masked-marginal", window: int = 1022, batch_size: int = 32,
                  progress: bool = False) -> np.ndarray:
    """(N,) float64: each mutant's summed log-ratio log p(mt) - log p(wt) (module docstring).

    ``mutants`` come from :func:`parse_mutant` on the same ``wild_type``. Forwards: one per distinct
    mutated position (masked-marginal) or per distinct window (wt-marginal), shared by all mutants.
    """
    vocab = tokenizer.get_vocab()
    residues = {s.wt for m in mutants for s in m} | {s.mt for m in mutants for s in m}
    missing = sorted(r for r in residues if r not in vocab)
    if missing:
        raise ScilmError(f"--model: residue(s) {', '.join(missing)} are not in its vocabulary")
    log_probs = position_log_probs(model, tokenizer, wild_type, [s.index for m in mutants for s in m], scoring,
                                   window, batch_size, progress)
    return np.array([sum(log_probs[s.index][vocab[s.mt]] - log_probs[s.index][vocab[s.wt]] for s in m)
                     for m in mutants], dtype=np.float64)


# -- files: the wild type, the mutants table, the scored table, Spearman and a scatter ----------

def read_wild_type(path: str | Path) -> str:
    """The one sequence of a FASTA (or table) file, validated; ScilmError if it holds another number."""
    records = read_proteins(path, task=None, label_column=None, unique_ids=False)
    if len(records) != 1:
        raise ScilmError(f"--wild-type {path}: holds {len(records)} sequences; give a file with the one wild type")
    return records[0].sequence


@dataclass
class MutantTable:
    """A mutants table as read: the header, each row's cells verbatim, and each row's line number."""

    path: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    mutant_column: str = "mutant"
    delimiter: str = ","
    mutants: list[tuple[Substitution, ...]] = field(default_factory=list)
    where_format: str = "{path}:{line}"  # how messages name a row

    def where(self, line: int) -> str:
        """How messages name row ``line``, e.g. ``mutants.csv:7`` or ``--mutant #2``."""
        return self.where_format.format(path=self.path, line=line)

    def column(self, name: str) -> list[str]:
        """The cells of column ``name`` (it must be in the header), in row order."""
        j = self.header.index(name)
        return [row[j] for row in self.rows]


def read_mutant_table(path: str | Path, mutant_column: str = "mutant") -> MutantTable:
    """A CSV/TSV (optionally .gz; ProteinGym layout) with a ``mutant_column``, every cell kept as text.

    Raises ScilmError naming the file (and line) for a missing column, a repeated column name, a row
    with another number of fields, or no rows.
    """
    from scilm.data.protein import _table_delimiter

    path = Path(path)
    if not path.is_file():
        raise ScilmError(f"--data {path}: no such file")
    if data_suffix(path) not in (".csv", ".tsv", ".txt"):
        raise ScilmError(f"--data {path}: give a table (.csv, .tsv or .txt, optionally .gz) with a "
                         f"{mutant_column!r} column")
    with open_text(path, newline="") as handle:
        first = handle.readline()
        if not first.strip():
            raise ScilmError(f"{path}: empty file (no header line)")
        delimiter = _table_delimiter(path, first)
        reader = csv.reader(itertools.chain([first], handle), delimiter=delimiter)
        try:
            header = next(reader)
            repeated = sorted({c for c in header if header.count(c) > 1})
            if repeated:
                raise ScilmError(f"{path}:1: column name(s) {', '.join(map(repr, repeated))} appear more than once")
            if mutant_column not in header:
                raise ScilmError(f"{path}: no column {mutant_column!r} (--mutant-column); columns are: "
                                 f"{', '.join(header)}")
            rows, lines = [], []
            for row in reader:
                if not row:  # a blank line
                    continue
                if len(row) != len(header):
                    raise ScilmError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise ScilmError(f"{path}:{reader.line_num}: malformed table ({exc})") from None
    if not rows:
        raise ScilmError(f"{path}: no mutants (only a header)")
    return MutantTable(str(path), header, rows, lines, mutant_column, delimiter)


def mutant_list(mutants: Sequence[str]) -> MutantTable:
    """Mutations given one by one (``--mutant A42G --mutant A42G:C55T``) as a one-column table."""
    return MutantTable("--mutant", ["mutant"], [[m] for m in mutants], list(range(1, len(mutants) + 1)),
                       where_format="{path} #{line}")


def parse_table_mutants(table: MutantTable, wild_type: str, offset: int = 1) -> None:
    """Fill ``table.mutants``; a ``mutated_sequence`` column (ProteinGym) must equal the wild type with
    the mutant applied. Raises ScilmError naming the file, line and mutation of the first bad row."""
    column = table.header.index(table.mutant_column)
    sequences = table.header.index("mutated_sequence") if "mutated_sequence" in table.header else None
    table.mutants = []
    for row, line in zip(table.rows, table.lines):
        where = table.where(line)
        subs = parse_mutant(row[column], wild_type, offset, where)
        if sequences is not None:
            given = normalize_sequence(row[sequences], f"{where} (mutated_sequence)")
            if given != apply_mutant(wild_type, subs):
                raise ScilmError(f"{where}: mutation {row[column].strip()!r}: mutated_sequence is not the wild type "
                                 f"with it applied (check --wild-type and --offset {offset})")
        table.mutants.append(subs)


def parse_numbers(values: Sequence[str], table: MutantTable, column: str) -> np.ndarray:
    """Cells as float64; empty / NaN / NA cells are NaN. ScilmError naming the line for any other text."""
    out = np.empty(len(values), dtype=np.float64)
    for k, (value, line) in enumerate(zip(values, table.lines)):
        text = value.strip()
        if text.lower() in ("", "nan", "na", "n/a", "none", "null"):
            out[k] = math.nan
            continue
        try:
            out[k] = float(text)
        except ValueError:
            raise ScilmError(f"{table.where(line)}: column {column!r} holds {value!r}, not a number") from None
    return out


def spearman(scores: np.ndarray, targets: np.ndarray) -> dict:
    """Spearman's rho (scipy.stats.spearmanr) over the rows where both are finite.

    Returns ``{"spearman": rho or None, "n": rows used, "n_missing": rows left out}``; rho is None
    (undefined) with fewer than 3 rows or a constant column.
    """
    from scipy.stats import spearmanr

    keep = np.isfinite(scores) & np.isfinite(targets)
    n = int(keep.sum())
    rho = None
    if n >= 3 and np.ptp(scores[keep]) > 0 and np.ptp(targets[keep]) > 0:
        rho = float(spearmanr(scores[keep], targets[keep]).statistic)
    return {"spearman": rho, "n": n, "n_missing": int(len(keep) - n)}


def _scatter(tmp: Path, scores: np.ndarray, targets: np.ndarray, report: dict, xlabel: str, ylabel: str,
             title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.isfinite(scores) & np.isfinite(targets)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    ax.scatter(scores[keep], targets[keep], s=4, alpha=0.35, linewidths=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    rho = "undefined" if report["spearman"] is None else f"{report['spearman']:.3f}"
    ax.set_title(f"{title}\nSpearman {rho} (n = {report['n']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    plt.close(fig)


def report_paths(out: Path) -> tuple[Path, Path]:
    """The Spearman JSON and scatter PNG written beside ``out``: ``<stem>.spearman.json``, ``<stem>.scatter.png``."""
    return out.with_name(f"{out.stem}.spearman.json"), out.with_name(f"{out.stem}.scatter.png")


def write_scored(table: MutantTable, scores: np.ndarray, out: Path, score_column: str, inputs: Sequence = (),
                 report: dict | None = None, targets: np.ndarray | None = None, title: str = "") -> list[Path]:
    """The input table with ``score_column`` appended (all columns kept, rows in input order), and
    with ``report`` its Spearman JSON and scatter PNG (:func:`report_paths`): all written whole or none.

    Scores are written in full precision (``repr``), so ranks read back equal ranks computed here.
    """
    delimiter = "\t" if data_suffix(out) == ".tsv" else ","
    written = [out]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(out, inputs))
        if report is not None:
            json_path, png_path = report_paths(out)
            json_tmp = stack.enter_context(atomic_output(json_path, inputs))
            png_tmp = stack.enter_context(atomic_output(png_path, inputs))
            json_tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            _scatter(png_tmp, scores, targets, report, f"{score_column} (scilm score-variants)",
                     report["dms_column"], title)
            written += [json_path, png_path]
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow([*table.header, score_column])
            writer.writerows([*row, repr(float(score))] for row, score in zip(table.rows, scores, strict=True))
    return written


def load_masked_lm(name_or_path: str):
    """An ESM masked LM (hub id, local directory, shipped checkpoint) and its tokenizer, in eval mode.

    Raises ScilmError for a preset (random weights), a model that is not ESM, and a model without
    its masked-LM head (a classifier saved by ``scilm train``): scores need the pre-trained head.
    """
    from transformers import AutoModelForMaskedLM

    from scilm.models.loading import load_pretrained
    from scilm.models.protein import _first_line, _load_config, is_preset, load_tokenizer, resolve_source

    if is_preset(name_or_path):
        raise ScilmError(f"--model {name_or_path}: a preset has random weights; variant scores need a pre-trained "
                         "masked LM (a hub id such as facebook/esm2_t33_650M_UR50D, a local directory, or the "
                         "shipped esm2-tiny-mlm)")
    source = resolve_source(name_or_path)
    config = _load_config(source)
    if getattr(config, "model_type", None) != "esm":
        raise ScilmError(f"--model {name_or_path}: a {config.model_type!r} model; score-variants needs an ESM masked LM")
    heads = _lm_head_in_checkpoint(source)
    architectures = getattr(config, "architectures", None) or []
    if heads is False or (heads is None and architectures and not any(a.endswith("ForMaskedLM") for a in architectures)):
        kind = architectures[0] if architectures else "model"
        raise ScilmError(f"--model {name_or_path}: a {kind} without a masked-LM head (lm_head); variant scores need "
                         "the pre-trained masked LM, e.g. the model it was fine-tuned from")
    tokenizer = load_tokenizer(source, config)
    try:
        model = load_pretrained(AutoModelForMaskedLM, source, use_safetensors=True)
    except OSError as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def _lm_head_in_checkpoint(source: str) -> bool | None:
    """Whether a local checkpoint's safetensors hold ``lm_head.*`` tensors (None: not a local checkpoint)."""
    path = Path(source)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import SafetensorError, safe_open

    try:
        for file in files:
            with safe_open(str(file), "pt") as handle:
                if any(key.startswith("lm_head.") for key in handle.keys()):
                    return True
    except (SafetensorError, OSError):
        return None  # a damaged file: load_pretrained says so in one line
    return False


@dataclass
class ScoreResult:
    """What :func:`score_variants_file` wrote and found."""

    written: list[Path]
    n_mutants: int
    n_forwards: int
    report: dict | None


def score_variants_file(model, tokenizer, wild_type: str, table: MutantTable, out: Path, *, scoring: str,
                        window: int, batch_size: int = 32, score_column: str | None = None,
                        dms_column: str | None = "DMS_score", dms_required: bool = False, progress: bool = True,
                        inputs: Sequence = (), model_name: str = "") -> ScoreResult:
    """Score every row of ``table`` (already parsed, :func:`parse_table_mutants`) and write ``out``
    (:func:`write_scored`); with a ``dms_column`` in the table, the Spearman report too.

    ``score_column`` defaults to the scoring's name (``masked_marginal``/``wt_marginal``); it may not
    exist in the table already. ``dms_required``: a missing ``dms_column`` is an error (the user
    named it) rather than no report.
    """
    score_column = score_column or scoring.replace("-", "_")
    if score_column in table.header:
        raise ScilmError(f"{table.path}: already has a column {score_column!r}; choose another --score-column")
    if dms_column and dms_column not in table.header:
        if dms_required:
            raise ScilmError(f"{table.path}: no column {dms_column!r} (--dms-column); columns are: "
                             f"{', '.join(table.header)}")
        dms_column = None
    targets = parse_numbers(table.column(dms_column), table, dms_column) if dms_column else None
    scores = score_mutants(model, tokenizer, wild_type, table.mutants, scoring, window, batch_size, progress)
    n_forwards = len(plan_forwards([s.index for m in table.mutants for s in m], len(wild_type), scoring, window))
    report = None
    if targets is not None:
        report = {**spearman(scores, targets), "score_column": score_column, "dms_column": dms_column,
                  "scoring": scoring, "model": model_name, "window": window, "n_forwards": n_forwards,
                  "data": table.path}
    written = write_scored(table, scores, out, score_column, inputs, report, targets,
                           f"{model_name or 'model'}, {scoring}")
    return ScoreResult(written, len(table.rows), n_forwards, report)


def check_score_outputs(out: Path, inputs: Sequence, with_report: bool) -> None:
    """Before any work: ``out`` (and the report files beside it) are not directories nor inputs."""
    check_output(out, inputs)
    if with_report:
        for path in report_paths(out):
            check_output(path, inputs)
