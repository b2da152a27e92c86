"""The protein evaluation run: read a labelled file, predict with :mod:`scilm.inference.predict`,
score by the model's kind (:mod:`scilm.evaluation.registry`), write three files into ``out``.

``out`` is a directory: new, empty, or (with ``overwrite``) one whose files scilm may replace; only
the three outputs (``metrics.json``, ``predictions.csv`` and the task's PNG) are written there, all
computed first and moved into place together (:func:`scilm.io.atomic_output`), so bad input or a
failed write leaves ``out`` as it was.
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scilm.data import protein as pdata
from scilm.errors import ScilmError, name
from scilm.io import atomic_output, write_json_atomic

log = logging.getLogger(__name__)

METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.csv"


@dataclass(frozen=True)
class EvaluationData:
    """The labelled file and how to read it (``label_column`` None: the evaluation's default)."""

    path: str
    sequence_column: str = pdata.DEFAULT_SEQUENCE_COLUMN
    label_column: str | None = None
    id_column: str | None = None


class ProteinEvaluation:
    """How one kind of protein model is evaluated; subclasses set :attr:`plot_file` and override
    :meth:`read`, :meth:`metrics`, :meth:`prediction_table` and :meth:`plot`.

    ``outputs`` are what :func:`scilm.inference.predict.predict_proteins` returns (one dict per record,
    label -> probability or value); ``targets`` what :meth:`read` returns, one per record.
    """

    plot_file = "plot.png"

    def load(self, model: str):
        """(model in eval mode, tokenizer) of a trained model directory."""
        from scilm.models.protein import load_trained_classifier

        return load_trained_classifier(model)

    def read(self, data: EvaluationData, config, counts: Counter) -> tuple[list[pdata.ProteinRecord], Any]:
        """Every record of ``data.path`` in input order and its targets; records a reader leaves out are
        counted in ``counts`` (:data:`scilm.data.protein.COUNT_KEYS`). Raises ScilmError for bad input."""
        raise NotImplementedError

    def predict(self, net, tokenizer, sequences: list[str], batch_size: int, truncate: int) -> list[dict[str, float]]:
        """The model's outputs per sequence: the one forward pipeline of ``scilm predict``."""
        from scilm.inference.predict import predict_proteins

        return predict_proteins(net, tokenizer, sequences, batch_size, truncate)

    def metrics(self, outputs: list[dict[str, float]], targets, config) -> dict[str, Any]:
        raise NotImplementedError

    def prediction_table(self, records, outputs, targets) -> tuple[list[str], list[list[Any]]]:
        """(header, rows) of predictions.csv: one row per record, in input order."""
        raise NotImplementedError

    def plot(self, metrics: dict[str, Any], outputs, targets, config, path: Path) -> None:
        raise NotImplementedError


def check_eval_dir(out: Path, overwrite: bool) -> Path:
    """``out`` as evaluate's output directory: absent, empty, or any directory with ``overwrite``
    (then only evaluate's three files are replaced; nothing else is touched). Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScilmError(f"{name('out')} {out}: exists and is not a directory (evaluate writes a directory)")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ScilmError(f"{name('out')} {out}: not empty (holds {shown}); choose a new or empty directory, or "
                         f"pass {name('overwrite')} to replace evaluate's files there ({METRICS_FILE}, "
                         f"{PREDICTIONS_FILE}, the PNG; nothing else is touched)")
    return out


def evaluate_proteins(model: str, data: EvaluationData, out: str | Path, batch_size: int = 32,
                      truncate: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate a trained protein model on a labelled file; returns the metrics written to ``out/metrics.json``.

    Writes ``out/metrics.json``, ``out/predictions.csv`` (one row per input record, in input order)
    and the task's PNG. Sequences are cut to ``truncate`` residues (default: the length the model
    was trained with), as ``scilm predict`` does. Raises ScilmError for bad input (nothing written).
    """
    from scilm.evaluation.registry import evaluation_for, problem_type_of
    from scilm.models.protein import _load_config, max_residues, resolve_source

    if batch_size < 1:
        raise ScilmError(f"{name('batch_size')} must be at least 1 (got {batch_size})")
    if truncate is not None and truncate < 1:
        raise ScilmError(f"{name('truncate')} must be at least 1 (got {truncate})")
    out = check_eval_dir(Path(out), overwrite)
    config = _load_config(resolve_source(model))
    if getattr(config, "is_encoder_decoder", False):
        raise ScilmError(f"{name('model')} {model}: a seq2seq model; evaluate it on Text+Chem JSONL")
    task = evaluation_for(config, model)
    counts: Counter = Counter()
    records, targets = task.read(data, config, counts)  # every input check before the model loads
    net, tokenizer = task.load(model)
    limit = truncate if truncate is not None else max_residues(net.config, tokenizer)
    outputs = task.predict(net, tokenizer, [r.sequence for r in records], batch_size, limit)
    metrics = {"model": str(model), "data": str(data.path), "problem_type": problem_type_of(config),
               "n": len(records), "truncate": limit,
               "n_truncated": sum(len(r.sequence) > limit for r in records),
               **{key: int(counts[key]) for key in pdata.COUNT_KEYS if counts[key]},  # left out by the reader
               **task.metrics(outputs, targets, net.config),
               "files": [METRICS_FILE, PREDICTIONS_FILE, task.plot_file]}
    header, rows = task.prediction_table(records, outputs, targets)
    _write_all(out, data.path, metrics, header, rows, lambda path: task.plot(metrics, outputs, targets,
                                                                             net.config, path), task.plot_file)
    return metrics


def _write_all(out: Path, data: str, metrics: dict, header: list[str], rows: list[list], plot, plot_file: str) -> None:
    """The three files, each to a temporary beside its target, moved into place only when all are written."""
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        predictions_tmp = enter(atomic_output(out / PREDICTIONS_FILE, [data]))
        plot_tmp = enter(atomic_output(out / plot_file, [data]))
        metrics_tmp = enter(atomic_output(out / METRICS_FILE, [data]))
        with open(predictions_tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        plot(plot_tmp)
        write_json_atomic(metrics_tmp, metrics)


def unknown_label_error(record: pdata.ProteinRecord, path: str, field: str, known: list[str]) -> ScilmError:
    """One line naming file, line and field of a label the model was not trained on."""
    return ScilmError(f"{path}:{record.line} (record {record.id}): {field} {record.label!r} is not a label of "
                      f"this model ({', '.join(known)})")
