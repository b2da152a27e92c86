"""The regression recipe (issue 13): one number per protein, standardised targets stored with the model,
metrics against scipy/scikit-learn recomputed from `scilm predict`, FLIP-style named splits, bad targets.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLED, DEEPLOC_TRAIN
from scilm.data.protein import read_proteins

GB1 = BUNDLED / "flip_gb1" / "gb1_all_splits.csv.gz"
HYDROPHOBIC = set("AILMFVW")


def hydrophobicity(sequence: str) -> float:
    return 10 * sum(residue in HYDROPHOBIC for residue in sequence) / len(sequence)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, Path]:
    """Train and validation tables whose target is 10 x the share of hydrophobic residues (learnable)."""
    root = tmp_path_factory.mktemp("regression")
    records = read_proteins(DEEPLOC_TRAIN, task="membrane")[:88]
    paths = []
    for name, part in (("train.csv", records[:64]), ("valid.csv", records[64:])):
        path = root / name
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "sequence", "score"])
            for r in part:
                sequence = r.sequence[:60]
                writer.writerow([r.id, sequence, f"{hydrophobicity(sequence):.6f}"])
        paths.append(path)
    return paths[0], paths[1]


def settings(tables, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "regression", "--data", tables[0], "--valid", tables[1], "--sequence-column",
            "sequence", "--label-column", "score", "--id-column", "name", "--model", "esm2-tiny", "--epochs", "3",
            "--batch-size", "8", "--lr", "2e-3", "--no-progress", "--out", out, *extra]


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory) -> Path:
    """The run `scilm train` + settings() makes, in-process (module-scoped: shared by the tests)."""
    from scilm.training import load_config, train

    out = tmp_path_factory.mktemp("run") / "run"
    train(load_config(None, dict(task="regression", data=str(tables[0]), valid=str(tables[1]),
                                 sequence_column="sequence", label_column="score", id_column="name",
                                 model="esm2-tiny", epochs=3.0, batch_size=8, lr=2e-3, progress=False, out=str(out))))
    return out


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_metrics_are_scipy_and_sklearn_on_the_saved_models_predictions(trained, tables, run_cli, tmp_path):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error, r2_score

    metrics = json.loads((trained / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tables[1])))
    observed = np.array([float(r["score"]) for r in rows])
    result = run_cli("predict", "--model", trained / "model", "--data", tables[1], "--sequence-column", "sequence",
                     "--id-column", "name", "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.stderr
    predictions = list(csv.DictReader(open(tmp_path / "preds.csv")))
    assert [p["id"] for p in predictions] == [r["name"] for r in rows]  # one row per record, input order
    predicted = np.array([float(p["score"]) for p in predictions])  # in the targets' own units
    assert metrics["eval_spearman"] == pytest.approx(spearmanr(predicted, observed).statistic, abs=1e-4)
    assert metrics["eval_pearson"] == pytest.approx(pearsonr(predicted, observed).statistic, abs=1e-4)
    assert metrics["eval_mse"] == pytest.approx(mean_squared_error(observed, predicted), rel=1e-4)
    assert metrics["eval_r2"] == pytest.approx(r2_score(observed, predicted), rel=1e-3, abs=1e-4)
    train_targets = np.array([float(r["score"]) for r in csv.DictReader(open(tables[0]))])
    assert metrics["eval_baseline_mse"] == pytest.approx(np.mean((observed - train_targets.mean()) ** 2), rel=1e-6)
    # the standardisation is stored with the model and undone at prediction
    config = json.loads((trained / "model" / "config.json").read_text())
    assert config["problem_type"] == "regression"
    assert config["scilm_target_mean"] == pytest.approx(train_targets.mean(), rel=1e-9)
    assert config["scilm_target_std"] == pytest.approx(train_targets.std(), rel=1e-9)
    assert metrics["target"]["train"]["n"] == 64 and metrics["target"]["valid"]["n"] == 24
    # a learnable target: the model beats always answering the training mean
    assert metrics["eval_mse"] < metrics["eval_baseline_mse"] and metrics["eval_spearman"] > 0.3


def test_standardisation_changes_the_scale_not_the_ranking(tables, run_cli, tmp_path):
    """--no-standardize trains on raw targets: metrics are still in the targets' units (config mean 0, sd 1)."""
    out = tmp_path / "raw"
    result = run_cli(*settings(tables, out, "--no-standardize", "--max-steps", "2"))
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["scilm_target_mean"], config["scilm_target_std"]) == (0.0, 1.0)


def test_named_splits_train_validate_and_leave_the_test_rows_out(run_cli, tmp_path):
    """FLIP's three_vs_rest: train on `train`, validate on `val`, never see `test` (counted)."""
    rows = list(csv.DictReader(gzip.open(GB1, "rt")))
    picked = [r for r in rows if r["three_vs_rest"] == "train"][:40] + \
             [r for r in rows if r["three_vs_rest"] == "val"][:10] + [r for r in rows if r["three_vs_rest"] == "test"][:7]
    table = tmp_path / "gb1.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    out = tmp_path / "gb1"
    result = run_cli("train", "--task", "regression", "--data", table, "--sequence-column", "sequence",
                     "--id-column", "variant", "--split-column", "three_vs_rest", "--train-split", "train",
                     "--valid-split", "val", "--truncate", "60", "--model", "esm2-tiny", "--max-steps", "2",
                     "--no-progress", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_eval"], metrics["n_excluded_by_split"]) == (40, 10, 7)


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ("", None), ("inf", "'inf'"), ("NaN", None)])
def test_a_target_that_is_not_a_number_is_one_line_naming_file_line_and_column(run_cli, tmp_path, value, shown):
    table = tmp_path / "t.csv"
    table.write_text(f"name,sequence,score\nA,MKTAYIAK,1.5\nB,MKVLAAGI,{value}\nC,MKWWLLAA,2.5\nD,MKAAAAAA,0.5\n")
    out = tmp_path / "run"
    result = run_cli("train", "--task", "regression", "--data", table, "--sequence-column", "sequence",
                     "--label-column", "score", "--id-column", "name", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    if shown is None:  # an empty or NaN cell is a missing label (--drop-missing-labels excludes it)
        assert line.startswith(f"error: {table}:3 (record B): missing label") and "'score'" in line
    else:
        assert line == f"error: {table}:3 (record B): --label-column 'score' holds {shown}, not a finite number"
    assert not out.exists()


def test_equal_targets_are_one_line(run_cli, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("name,sequence,score\nA,MKTAYIAK,1\nB,MKVLAAGI,1\nC,MKWWLLAA,1\nD,MKAAAAAA,1\nE,MKAAAAAC,1\n")
    result = run_cli("train", "--task", "regression", "--data", table, "--sequence-column", "sequence",
                     "--label-column", "score", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "nothing to learn" in result.stderr and not (tmp_path / "run").exists()
