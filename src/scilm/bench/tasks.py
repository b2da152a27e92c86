"""``scilm bench tasks``: every protein task trained and evaluated on real data, beside its trivial baseline.

Each row (:data:`ROWS`) is one ``scilm train`` run of a recipe on a public data set: the data
bundled with scilm where it may be bundled, else ``../shared/data`` (a row whose data is absent is
skipped, said so in the table). Every run fine-tunes ``esm2-tiny-mlm`` (the tiny ESM-2 pre-trained
by ``scilm pretrain`` on the bundled DeepLoc sequences) for a few epochs on a CPU; the numbers say
what the recipe does, not what ESM-2 650M reaches. The baseline is the trivial predictor of each
task, fitted on the TRAINING set only (its majority class, its mean, its most frequent label set,
its majority label per residue) and scored on the same validation set: a row beats its baseline or
says it does not.

A row is a function ``(out: Path, quick: bool) -> dict | None`` registered with :func:`row`; it
returns the table's cells (``task``, ``data``, ``n_train``, ``n_valid``, ``metric``, ``value``,
``baseline``, ``seconds``) or None when its data is absent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from scilm.bench.report import machine_name, markdown_table
from scilm.bench.runner import BUNDLED, run_train
from scilm.io import write_json_atomic, write_text_atomic

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # beside a checkout: ../shared/data
GB1 = BUNDLED.parent / "flip_gb1" / "gb1_all_splits.csv.gz"
SS3 = BUNDLED.parent / "flip_ss3" / "ss3_slice.tsv.gz"
WARM_MODEL = "esm2-tiny-mlm"

Row = Callable[[Path, bool], "dict[str, Any] | None"]
ROWS: dict[str, Row] = {}


def row(name: str) -> Callable[[Row], Row]:
    """Register a bench row under ``name`` (the table's order is the registration order)."""
    def register(function: Row) -> Row:
        ROWS[name] = function
        return function
    return register


def _common(quick: bool) -> dict[str, Any]:
    return {"model": WARM_MODEL, "batch_size": 16, "lr": 5e-4, "progress": False, "overwrite": True,
            "epochs": 2.0 if quick else 4.0}


def _timed(config: dict[str, Any], workdir: Path) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    metrics = run_train(config, workdir)
    return metrics, time.perf_counter() - started


def majority_baseline(label_counts: dict[str, dict[str, int]]) -> float:
    """Validation accuracy of always answering the TRAINING set's majority class (ties: the first in the
    model's class order, as ``numpy.argmax``), from a run's ``label_counts`` ({"train"|"valid": {label: n}}).

    The validation set's own majority would be a baseline that peeked at the answers (optimistic).
    """
    train, valid = label_counts["train"], label_counts["valid"]
    majority = max(train, key=lambda label: (train[label], -list(train).index(label)))
    return valid.get(majority, 0) / sum(valid.values())


def _deeploc_classification(task: str, out: Path, quick: bool) -> dict[str, Any]:
    """A one-label DeepLoc-1 task on the bundled files: accuracy vs always answering the training majority."""
    config = {**_common(quick), "task": task, "data": str(BUNDLED / "train.fasta"),
              "valid": str(BUNDLED / "valid.fasta"), "truncate": 256 if quick else 512, "out": str(out / "run")}
    metrics, seconds = _timed(config, out)
    return {"task": task, "data": "DeepLoc-1 (bundled)", "n_train": metrics["n_train"],
            "n_valid": metrics["n_eval"], "metric": "accuracy", "value": metrics["eval_accuracy"],
            "baseline": majority_baseline(metrics["label_counts"]), "seconds": seconds}


@row("membrane")
def membrane(out: Path, quick: bool) -> dict[str, Any]:
    """Membrane vs soluble on the bundled DeepLoc-1 files (accuracy vs always answering the training majority class)."""
    return _deeploc_classification("membrane", out, quick)


@row("localization")
def localization(out: Path, quick: bool) -> dict[str, Any]:
    """10-class location on the bundled DeepLoc-1 files (single-location proteins)."""
    return _deeploc_classification("localization", out, quick)


@row("regression")
def regression(out: Path, quick: bool) -> dict[str, Any]:
    """FLIP GB1 three_vs_rest (bundled): train on up to triple mutants, validate on FLIP's val rows.

    The metric is Spearman; its baseline, the constant training mean, has no ranking (0). MSE and
    the mean predictor's MSE are in results.json.
    """
    config = {**_common(quick), "task": "regression", "data": str(GB1), "sequence_column": "sequence",
              "id_column": "variant", "split_column": "three_vs_rest", "train_split": "train", "valid_split": "val",
              # the four mutated sites are 39-41 and 54: the first 80 residues hold them all
              # lr 1e-3 collapsed to the mean predictor (MSE = the baseline's); 2e-4 learns within an epoch
              "truncate": 80, "lr": 2e-4, "out": str(out / "run")}
    metrics, seconds = _timed(config, out)
    return {"task": "regression", "data": "FLIP GB1 three_vs_rest (bundled)", "n_train": metrics["n_train"],
            "n_valid": metrics["n_eval"], "metric": "Spearman (MSE vs mean predictor)",
            "value": metrics["eval_spearman"], "baseline": 0.0, "seconds": seconds,
            "extra": f"MSE {metrics['eval_mse']:.3f} vs {metrics['eval_baseline_mse']:.3f}"}


@row("multilabel")
def multilabel(out: Path, quick: bool) -> dict[str, Any] | None:
    """DeepLoc-2.0's HPA set (../shared/data, not bundleable; absent: None), its 8 location columns, a seeded
    80/20 split. The metric is micro F1 at threshold 0.5 (not tuned on the set it measures); the baseline
    predicts the training set's most frequent location set for every protein."""
    data = SHARED / "deeploc2_subsets" / "hpa_testset.csv"
    if not data.is_file():
        return None
    # 1,373 training proteins: twice the epochs of the others, or the model stays at the frequent set
    config = {**_common(quick), "task": "multilabel", "data": str(data), "sequence_column": "fasta",
              "id_column": "sid", "truncate": 256 if quick else 512, "out": str(out / "run"),
              "epochs": 2 * _common(quick)["epochs"]}
    metrics, seconds = _timed(config, out)
    return {"task": "multilabel", "data": "DeepLoc-2.0 HPA set (../shared/data)", "n_train": metrics["n_train"],
            "n_valid": metrics["n_eval"], "metric": "micro F1 at 0.5 (exact-set accuracy vs baseline)",
            "value": metrics["eval_micro_f1"], "baseline": metrics["eval_baseline_micro_f1"], "seconds": seconds,
            "extra": f"exact set {metrics['eval_subset_accuracy']:.3f} vs "
                     f"{metrics['eval_baseline_subset_accuracy']:.3f}"}

@row("residue")
def residue(out: Path, quick: bool) -> dict[str, Any]:
    """3-state secondary structure on the bundled FLIP SS3 slice: train on its train rows, validate on its val
    rows (test rows left out), unresolved residues masked. Baseline: the training majority class on every
    residue; the majority label of each amino acid is in ``extra``."""
    config = {**_common(quick), "task": "residue", "data": str(SS3), "sequence_column": "sequence",
              "label_column": "ss3", "mask_column": "mask", "id_column": "id", "split_column": "split",
              "train_split": "train", "valid_split": "val", "truncate": 256, "lr": 1e-3, "out": str(out / "run")}
    metrics, seconds = _timed(config, out)
    return {"task": "residue", "data": "FLIP SS3 slice (bundled)", "n_train": metrics["n_train"],
            "n_valid": metrics["n_eval"], "metric": "per-residue accuracy (macro F1, MCC; amino-acid baseline)",
            "value": metrics["eval_accuracy"], "baseline": metrics["eval_baseline_accuracy"], "seconds": seconds,
            "extra": f"F1 {metrics['eval_f1']:.3f}, MCC {metrics['eval_mcc']:.3f}; per-amino-acid majority "
                     f"{metrics['eval_baseline_residue_type_accuracy']:.3f}"}


def run_tasks_bench(out: str | Path, quick: bool = False, only: list[str] | None = None,
                    command: str = "scilm bench tasks") -> str:
    """Run the rows (``only``: by name), write ``results.json`` and ``table.md`` into ``out``; returns the table.

    Raises ScilmError for an unknown row name.
    """
    from scilm.errors import ScilmError

    out = Path(out)
    names = only or list(ROWS)
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise ScilmError(f"unknown bench row(s) {', '.join(unknown)}; rows are: {', '.join(ROWS)}")
    results = []
    for name in names:
        result = ROWS[name](out / name, quick)
        results.append(result or {"task": name, "skipped": "its data is not here (../shared/data)"})
    header = ["task", "data", "train", "valid", "metric", "value", "trivial baseline", "beats it", "time (s)"]
    table_rows = []
    for r in results:
        if "skipped" in r:
            table_rows.append([r["task"], r["skipped"], "", "", "", "", "", "", ""])
            continue
        beats = "yes" if r["value"] > r["baseline"] else "**no**"
        value = f"{r['value']:.3f}" + (f" ({r['extra']})" if r.get("extra") else "")
        table_rows.append([r["task"], r["data"], r["n_train"], r["n_valid"], r["metric"], value,
                           f"{r['baseline']:.3f}", beats, f"{r['seconds']:.0f}"])
    table = "\n".join([f"Machine: {machine_name()}.", f"Command: `{command}`.", "",
                       markdown_table(header, table_rows), ""])
    write_json_atomic(out / "results.json", {"machine": machine_name(), "command": command, "quick": quick,
                                             "rows": results})
    write_text_atomic(out / "table.md", table)
    return table


__all__ = ["ROWS", "row", "run_tasks_bench"]
