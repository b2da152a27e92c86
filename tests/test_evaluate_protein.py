"""`scilm evaluate` for protein models (issue 13 task 4): every metric recomputed by scikit-learn / scipy
from the predictions file it writes and equal to the training run's own validation metrics; the data's
labels mapped to the model's by name; bad input one line, nothing written; --out never clobbered.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEEPLOC_TRAIN

from scilm.data.protein import read_proteins

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HYDROPHOBIC = set("AILMFVW")


@pytest.fixture(scope="module")
def classifier(tiny_fastas, tmp_path_factory) -> Path:
    """A membrane classifier trained for 2 epochs on the tiny DeepLoc slice (its validation: tiny_fastas[1])."""
    from scilm.training import load_config, train

    out = tmp_path_factory.mktemp("eval-cls") / "run"
    train(load_config(None, dict(task="membrane", data=str(tiny_fastas[0]), valid=str(tiny_fastas[1]), truncate=60,
                                 model="esm2-tiny-mlm", epochs=2.0, batch_size=8, lr=1e-3, progress=False,
                                 out=str(out))))
    return out


@pytest.fixture(scope="module")
def regression_tables(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-reg")
    records = read_proteins(DEEPLOC_TRAIN, task="membrane")[:72]
    paths = []
    for name, part in (("train.csv", records[:48]), ("valid.csv", records[48:])):
        with open(root / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "sequence", "score"])
            for r in part:
                s = r.sequence[:60]
                writer.writerow([r.id, s, f"{10 * sum(c in HYDROPHOBIC for c in s) / len(s):.6f}"])
        paths.append(root / name)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def regressor(regression_tables, tmp_path_factory) -> Path:
    from scilm.training import load_config, train

    out = tmp_path_factory.mktemp("eval-reg-run") / "run"
    train(load_config(None, dict(task="regression", data=str(regression_tables[0]), valid=str(regression_tables[1]),
                                 sequence_column="sequence", label_column="score", id_column="name",
                                 model="esm2-tiny", epochs=2.0, batch_size=8, lr=2e-3, progress=False, out=str(out))))
    return out


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_classification_metrics_are_sklearns_on_the_predictions_file_and_the_runs_own(
        classifier, tiny_fastas, run_cli, tmp_path):
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        matthews_corrcoef,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "metrics.json", "predictions.csv"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    metrics = json.loads((out / "metrics.json").read_text())
    records = read_proteins(tiny_fastas[1], task="membrane", unique_ids=False)
    rows = rows_of(out / "predictions.csv")
    assert [r["id"] for r in rows] == [r.id for r in records]  # one row per record, input order
    assert [r["label"] for r in rows] == [r.label for r in records]
    labels = ["soluble", "membrane"]  # the model's id2label order
    assert metrics["labels"] == labels and metrics["problem_type"] == "single_label_classification"
    y = np.array([labels.index(r["label"]) for r in rows])
    predicted = np.array([labels.index(r["predicted_label"]) for r in rows])
    probabilities = np.array([[float(r[f"prob_{label}"]) for label in labels] for r in rows])
    assert (probabilities.argmax(axis=1) == predicted).all()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert metrics["f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-12)
    assert metrics["f1"] == pytest.approx(f1_score(y, predicted), abs=1e-12)  # binary: the positive class
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(y, predicted), abs=1e-12)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, probabilities[:, 1]), abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, zero_division=0)
    for i, label in enumerate(labels):
        assert metrics["per_class"][label] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "n": support[i],
             "n_predicted": int((predicted == i).sum())}, abs=1e-12)
        assert metrics["counts"][label] == sum(r.label == label for r in records) == 8
    assert metrics["confusion_matrix"] == confusion_matrix(y, predicted).tolist()
    # the same validation file, the same weights: the run's own validation metrics
    run = json.loads((classifier / "metrics.json").read_text())
    for key in ("accuracy", "f1", "mcc", "auroc"):
        assert metrics[key] == pytest.approx(run[f"eval_{key}"], abs=1e-6), key
    assert metrics["n"] == run["n_eval"] == 16 and metrics["truncate"] == 60  # the trained length
    assert len({r["predicted_label"] for r in rows}) == 2  # a model that tells the classes apart
    # training's metrics.json: records per class of each split, every class named
    assert run["label_counts"] == {"train": {"soluble": 24, "membrane": 24}, "valid": metrics["counts"]}


def test_a_tables_labels_are_mapped_to_the_models_by_name(classifier, tiny_fastas, run_cli, tmp_path):
    """A 0/1 Membrane column (reversed row order) and a soluble/membrane column: the same verdicts per id."""
    records = read_proteins(tiny_fastas[1], task="membrane")[::-1]
    for column, spell in (("Membrane", {"soluble": "0", "membrane": "1"}), ("kind", {"soluble": "soluble",
                                                                                      "membrane": "membrane"})):
        table = tmp_path / f"{column}.tsv"
        table.write_text("id\tSequence\t" + column + "\n" + "".join(f"{r.id}\t{r.sequence}\t{spell[r.label]}\n"
                                                                  for r in records))
        extra = [] if column == "Membrane" else ["--label-column", column]
        result = run_cli("evaluate", "--model", classifier / "model", "--data", table, "--id-column", "id",
                         "--out", tmp_path / column, *extra)
        assert result.exit_code == 0, result.stderr
    fasta = tmp_path / "fasta"
    assert run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", fasta).exit_code == 0
    reference = {r["id"]: r for r in rows_of(fasta / "predictions.csv")}
    expected = json.loads((fasta / "metrics.json").read_text())
    for column in ("Membrane", "kind"):
        rows = rows_of(tmp_path / column / "predictions.csv")
        assert [r["id"] for r in rows] == [r.id for r in records]
        for row in rows:
            assert (row["label"], row["predicted_label"]) == (reference[row["id"]]["label"],
                                                              reference[row["id"]]["predicted_label"])
            assert float(row["prob_membrane"]) == pytest.approx(float(reference[row["id"]]["prob_membrane"]), abs=1e-6)
        metrics = json.loads((tmp_path / column / "metrics.json").read_text())
        for key in ("accuracy", "f1_macro", "mcc", "auroc", "confusion_matrix"):
            assert np.allclose(metrics[key], expected[key], atol=1e-6), (column, key)


def test_batch_size_changes_cost_not_the_metrics(classifier, tiny_fastas, run_cli, tmp_path):
    results = []
    for batch_size in (1, 32):
        out = tmp_path / str(batch_size)
        assert run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", out,
                       "--batch-size", batch_size).exit_code == 0
        results.append(json.loads((out / "metrics.json").read_text()))
    for key in ("accuracy", "f1_macro", "mcc", "auroc", "confusion_matrix"):
        assert np.allclose(results[0][key], results[1][key], atol=1e-6), key


def test_a_label_the_model_does_not_know_is_one_line_and_nothing_is_written(classifier, tiny_fastas, run_cli,
                                                                            tmp_path):
    records = read_proteins(tiny_fastas[1], task="membrane")[:4]
    table = tmp_path / "t.csv"
    labels = ["soluble", "membrane", "Membrane ", "lipid"]  # a stray space is trimmed; 'lipid' is unknown
    table.write_text("id,Sequence,kind\n" + "".join(f"{r.id},{r.sequence},{label}\n"
                                                    for r, label in zip(records, labels)))
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", classifier / "model", "--data", table, "--label-column", "kind",
                     "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {table}:4 (record {records[2].id}): column 'kind' 'Membrane' is not a "
                                     "label of this model (soluble, membrane)")
    assert not out.exists()


@pytest.mark.slow  # trains its regressor (module fixture)
def test_regression_metrics_are_scipys_and_sklearns_on_the_predictions_file(regressor, regression_tables, run_cli,
                                                                            tmp_path):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error, r2_score

    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", regressor / "model", "--data", regression_tables[1], "--sequence-column",
                     "sequence", "--id-column", "name", "--out", out)  # label column: the model's target, score
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.csv", "scatter.png"]
    assert (out / "scatter.png").read_bytes()[:8] == PNG_MAGIC
    metrics = json.loads((out / "metrics.json").read_text())
    data = rows_of(regression_tables[1])
    rows = rows_of(out / "predictions.csv")
    assert [r["id"] for r in rows] == [d["name"] for d in data]
    observed = np.array([float(d["score"]) for d in data])
    assert [float(r["observed"]) for r in rows] == list(observed)
    predicted = np.array([float(r["predicted"]) for r in rows])
    assert metrics["spearman"] == pytest.approx(spearmanr(predicted, observed).statistic, abs=1e-12)
    assert metrics["pearson"] == pytest.approx(pearsonr(predicted, observed).statistic, abs=1e-12)
    assert metrics["mse"] == pytest.approx(mean_squared_error(observed, predicted), rel=1e-12)
    assert metrics["r2"] == pytest.approx(r2_score(observed, predicted), rel=1e-12)
    assert metrics["target"] == pytest.approx({"name": "score", "n": 24, "mean": observed.mean(),
                                               "std": observed.std(), "min": observed.min(), "max": observed.max()})
    assert metrics["problem_type"] == "regression"
    # predictions.csv holds what `scilm predict` writes for the same file
    assert run_cli("predict", "--model", regressor / "model", "--data", regression_tables[1], "--sequence-column",
                   "sequence", "--id-column", "name", "--out", tmp_path / "p.csv").exit_code == 0
    assert [float(r["score"]) for r in rows_of(tmp_path / "p.csv")] == list(predicted)
    run = json.loads((regressor / "metrics.json").read_text())
    assert run["target"]["valid"] == pytest.approx({k: v for k, v in metrics["target"].items() if k != "name"})
    train_y = np.array([float(d["score"]) for d in rows_of(regression_tables[0])])
    assert run["target"]["train"] == pytest.approx({"n": 48, "mean": train_y.mean(), "std": train_y.std(),
                                                    "min": train_y.min(), "max": train_y.max()})
    for key in ("spearman", "pearson", "mse", "r2"):
        assert metrics[key] == pytest.approx(run[f"eval_{key}"], rel=1e-4, abs=1e-5), key


@pytest.mark.slow  # shares the trained regressor
def test_a_target_that_is_not_a_number_is_one_line_and_nothing_is_written(regressor, run_cli, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("name,sequence,score\nA,MKTAYIAK,1.5\nB,MKVLAAGI,abc\n")
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", regressor / "model", "--data", table, "--sequence-column", "sequence",
                     "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {table}:3 (record B): --label-column 'score' holds 'abc', not a finite number"
    assert not out.exists()


def test_out_is_never_clobbered_unasked(classifier, tiny_fastas, run_cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", out]
    result = run_cli(*args)
    assert result.exit_code == 2 and "--out" in result.stderr and "notes.txt" in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "metrics.json").is_file()
    assert run_cli(*args).exit_code == 2  # a finished evaluation is replaced only when asked
    (tmp_path / "file").write_text("x")
    result = run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", tmp_path / "file")
    assert result.exit_code == 2 and "not a directory" in result.stderr
    assert (tmp_path / "file").read_text() == "x"


def test_options_of_the_other_kind_of_model_are_errors(classifier, tiny_fastas, run_cli, tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"source": "a", "target": "b"}\n')
    result = run_cli("evaluate", "--model", classifier / "model", "--data", jsonl, "--label-column", "y")
    assert result.exit_code == 2 and "--label-column" in result.stderr and "protein" in result.stderr
    result = run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1], "--out", tmp_path / "o",
                     "--num-beams", "3")
    assert result.exit_code == 2 and "--num-beams" in result.stderr and not (tmp_path / "o").exists()
    result = run_cli("evaluate", "--model", classifier / "model", "--data", tiny_fastas[1])
    assert result.exit_code == 2 and "--out is required" in result.stderr


def test_training_counts_every_class_of_each_split_even_an_absent_one(tiny_fastas, run_cli, tmp_path):
    """A validation file of membrane proteins only: metrics.json still names soluble, with 0."""
    valid = tmp_path / "valid.fasta"
    text = tiny_fastas[1].read_text().split(">")[1:]
    valid.write_text("".join(">" + entry for entry in text if "-M" in entry.split("\n")[0]))
    out = tmp_path / "run"
    result = run_cli("train", "--data", tiny_fastas[0], "--valid", valid, "--max-steps", "1", "--truncate", "30",
                     "--no-progress", "--out", out)
    assert result.exit_code == 0, result.stderr
    counts = json.loads((out / "metrics.json").read_text())["label_counts"]
    assert counts == {"train": {"soluble": 24, "membrane": 24}, "valid": {"soluble": 0, "membrane": 8}}
