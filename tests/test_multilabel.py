"""The multi-label recipe (issue 13 task 1): DeepLoc-2-style 0/1 location columns, a BCE head, per-label
thresholds tuned for MCC on validation and saved with the model, DeepLoc 2.0's metrics recomputed with
scikit-learn from `scilm predict`, gradient accumulation, LoRA, sifting, exact resume, bad input.

Every table is synthetic (written here) and every model esm2-tiny.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_invariants_training import recorder  # noqa: F401 (a fixture: records each step of a run)

from scilm.training.recipes.multilabel.metrics import (
    best_mcc_threshold,
    most_frequent_set,
    multilabel_metrics,
)

AMINO = "ACDEFGHIKLMNPQRSTVWY"
# DeepLoc-2 location columns (a subset, in the table's own order) and two columns that are not labels
HEADER = ["sid", "Sequence", "Lengths", "Cytoplasm", "Nucleus", "Cell membrane", "Peroxisome", "Partition"]
LABELS = ["Cytoplasm", "Nucleus", "Cell membrane", "Peroxisome"]  # scilm's order: DeepLoc-2's (LOCALIZATION_LABELS)


def synthetic_rows(n: int, seed: int, first_id: int = 0) -> list[list]:
    """Rows whose labels are written into the sequence (a motif per location): learnable, many multi-label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sequence = "M" + "".join(rng.choice(AMINO) for _ in range(rng.randint(12, 30)))
        cytoplasm, nucleus, membrane = (rng.random() < 0.5), (rng.random() < 0.5), (rng.random() < 0.4)
        peroxisome = i % 5 == 0
        sequence = ("WWW" if cytoplasm else "") + sequence + ("KKRKRK" if nucleus else "") + \
                   ("LLIVLLAIL" if membrane else "") + ("SKL" if peroxisome else "")
        rows.append([f"P{first_id + i}", sequence, len(sequence), int(cytoplasm), int(nucleus), int(membrane),
                     int(peroxisome), i % 3])
    return rows


def write_table(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multilabel")
    return (write_table(root / "train.csv", synthetic_rows(24, 0)),
            write_table(root / "valid.csv", synthetic_rows(12, 1, first_id=1000)))


def truth_of(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["sid"] for r in rows], np.array([[int(r[label]) for label in LABELS] for r in rows])


def base_settings(tables, out: Path, **extra) -> dict:
    return dict(task="multilabel", data=str(tables[0]), valid=str(tables[1]), model="esm2-tiny",
                **{"batch_size": 4, "lr": 2e-3, "progress": False, "out": str(out), **extra})


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory) -> Path:
    """A run with the default label columns (the DeepLoc-2 locations the table has), in-process."""
    from scilm.training import load_config, train

    out = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(1)
    train(load_config(None, base_settings(tables, out, epochs=2.0)))
    return out


# -- metrics and thresholds against independent computations -----------------------------------------

def test_metrics_on_a_hand_computed_example():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    predicted = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    metrics = multilabel_metrics(predicted, truth, ["a", "b", "c"])
    assert metrics["subset_accuracy"] == 0.5  # rows 1 and 3 exactly right
    assert metrics["jaccard"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2) / 4)
    # micro: tp 4, fp 1, fn 1 -> F1 = 8 / 10; macro: a 1/2, b 1, c 1
    assert metrics["micro_f1"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 1 + 1) / 3)
    # a: tp 1, fp 1, fn 1, tn 1 -> MCC 0; c: perfect
    assert metrics["mcc_a"] == pytest.approx(0.0) and metrics["mcc_c"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_the_tuned_threshold_reaches_the_best_mcc_of_any_threshold(seed):
    """Brute force with scikit-learn over every cut between the sorted probabilities (and both ends)."""
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(seed)
    truth = (rng.random(40) < 0.3).astype(int)
    probabilities = np.clip(0.3 * truth + rng.random(40) * 0.7, 0, 1).round(2)  # ties included
    threshold, tuned = best_mcc_threshold(probabilities, truth)
    assert tuned
    cuts = np.concatenate([[0.0], np.unique(probabilities) + 1e-9])
    best = max(matthews_corrcoef(truth, (probabilities >= cut).astype(int)) for cut in cuts)
    assert matthews_corrcoef(truth, (probabilities >= threshold).astype(int)) == pytest.approx(best, abs=1e-12)
    # without a positive (or a negative) the MCC cannot choose: 0.5, said untuned
    assert best_mcc_threshold(probabilities, np.zeros(40, dtype=int)) == (0.5, False)


def test_the_most_frequent_set_is_counted_over_whole_rows():
    rows = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [1, 1], [0, 1]])
    assert most_frequent_set(rows).tolist() == [0, 1]  # 3 of 6 rows
    assert most_frequent_set(np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 0]])).tolist() == [1, 1]  # tie: first seen


def test_bce_item_sums_are_pytorchs_bce_and_fillers_count_nothing():
    from scilm.training.recipes.multilabel.recipe import MultiLabelLoss, bce_sums

    logits = torch.randn(3, 4)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [-100, -100, -100, -100]])
    sums, items = bce_sums({"logits": logits}, labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], labels[:2], reduction="none")
    assert torch.allclose(sums[:2], expected.sum(dim=1)) and items.tolist() == [4, 4, 0] and sums[2] == 0

    class Fixed(torch.nn.Module):
        def forward(self, **inputs):
            return {"logits": logits[:2]}
    scores = MultiLabelLoss().loss(Fixed(), {"input_ids": torch.zeros(2, 3), "labels": labels[:2]})
    assert torch.allclose(scores, expected.mean(dim=1))  # sifting ranks by the mean BCE over labels


# -- a trained model: metrics.json, config.json and `scilm predict` agree with scikit-learn --------------

def test_metrics_json_and_predictions_are_sklearns_on_the_saved_models_outputs(trained, tables, run_cli, tmp_path):
    metrics = json.loads((trained / "metrics.json").read_text())
    config = json.loads((trained / "model" / "config.json").read_text())
    assert metrics["labels"] == LABELS  # DeepLoc-2 columns present; Lengths and Partition are not labels
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(4)] == LABELS
    assert config["scilm_thresholds"] == metrics["thresholds"]

    result = run_cli("predict", "--model", trained / "model", "--data", tables[1], "--id-column", "sid",
                     "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.stderr
    ids, truth = truth_of(tables[1])
    rows = list(csv.DictReader(open(tmp_path / "preds.csv")))
    assert [r["id"] for r in rows] == ids
    probabilities = np.array([[float(r[f"prob_{label}"]) for label in LABELS] for r in rows])
    thresholds = np.array([metrics["thresholds"][label] for label in LABELS])
    tuned = (probabilities >= thresholds).astype(int)
    # the written label set is the thresholded probabilities
    assert [r["predicted_labels"] for r in rows] == [";".join(l for l, on in zip(LABELS, row) if on) for row in tuned]
    # metrics.json at 0.5 and at the tuned thresholds = scikit-learn on predict's probabilities
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        jaccard_score,
        matthews_corrcoef,
    )

    for reported, predicted in ((metrics, (probabilities >= 0.5).astype(int)),
                                (metrics["valid_at_tuned_thresholds"], tuned)):
        prefix = "eval_" if reported is metrics else ""
        assert reported[f"{prefix}subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert reported[f"{prefix}jaccard"] == pytest.approx(
            jaccard_score(truth, predicted, average="samples", zero_division=1.0))
        assert reported[f"{prefix}micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
        assert reported[f"{prefix}macro_f1"] == pytest.approx(
            f1_score(truth, predicted, average="macro", zero_division=0.0))
        for j, label in enumerate(LABELS):
            assert reported[f"{prefix}mcc_{label}"] == pytest.approx(matthews_corrcoef(truth[:, j], predicted[:, j]))
    # each tuned threshold is at least as good (MCC) as 0.5 on validation
    for j, label in enumerate(LABELS):
        assert matthews_corrcoef(truth[:, j], tuned[:, j]) >= \
            matthews_corrcoef(truth[:, j], (probabilities[:, j] >= 0.5).astype(int)) - 1e-12
    # positives per label, and the baseline: the most frequent training set predicted for everyone
    _, train_truth = truth_of(tables[0])
    assert metrics["positive_counts"] == {"train": dict(zip(LABELS, train_truth.sum(0).tolist())),
                                          "valid": dict(zip(LABELS, truth.sum(0).tolist()))}
    common = Counter(map(tuple, train_truth.tolist())).most_common(1)[0][0]
    constant = np.tile(common, (len(truth), 1))
    assert metrics["eval_baseline_subset_accuracy"] == pytest.approx(accuracy_score(truth, constant))
    assert metrics["eval_baseline_micro_f1"] == pytest.approx(f1_score(truth, constant, average="micro"))


# -- efficiency switches change cost, never the answer --------------------------------------------

@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_accumulation_changes_nothing(recorder, tmp_path):  # noqa: F811 (the imported fixture)
    """(4, 1), (2, 2), (1, 4) on 6 proteins of uneven length: same losses, gradients, weights; step 1's loss is
    PyTorch's mean BCE over the window's 4 x C (protein, label) pairs."""
    from test_invariants_training import (
        SPLITS,
        assert_same_training,
        finish,
        model_at_start,
        whole_window,
    )

    from scilm.training import train
    from scilm.training.recipes.multilabel.config import Config

    train_table = write_table(tmp_path / "t.csv", synthetic_rows(6, 3))
    valid_table = write_table(tmp_path / "v.csv", synthetic_rows(4, 4, 100))
    def config(batch_size: int, grad_accum: int) -> Config:
        return Config(data=str(train_table), valid=str(valid_table), out=str(tmp_path / f"{batch_size}x{grad_accum}"),
                      batch_size=batch_size, grad_accum=grad_accum, warmup_ratio=0.0, lr=1e-3, progress=False,
                      model="esm2-tiny").validate()

    runs = [finish(recorder, train(config(b, g))) for b, g in SPLITS]
    assert_same_training(runs)
    run = runs[0]
    batch = whole_window(run, 1, pad_id=1)
    with torch.no_grad():
        logits = model_at_start(run)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
    assert batch["labels"].shape == (4, 4) and run.losses[1] == pytest.approx(float(expected), rel=1e-5)


def test_lora_run_saves_a_merged_model_with_its_thresholds(tables, run_cli, tmp_path):
    out = tmp_path / "lora"
    result = run_cli("train", "--task", "multilabel", "--data", tables[0], "--valid", tables[1], "--model",
                     "esm2-tiny", "--lora", "--max-steps", "2", "--batch-size", "4", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "model" / "config.json").read_text())
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2 and (out / "adapter").is_dir()
    assert config["scilm_thresholds"] == metrics["thresholds"] and set(config["scilm_thresholds"]) == set(LABELS)
    result = run_cli("predict", "--model", out / "model", "--data", tables[1], "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.stderr
    assert next(csv.reader(open(tmp_path / "p.csv")))[:2] == ["id", "predicted_labels"]


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_sifting_scores_with_the_multilabel_loss(tables, tmp_path):
    from scilm.training import load_config, train

    metrics = train(load_config(None, base_settings(tables, tmp_path / "sift", epochs=2.0, sift_beta=1.0,
                                                    sift_delay=1)))
    assert metrics["sifting"]["samples_seen"] > metrics["sifting"]["samples_kept"] > 0


@pytest.mark.slow  # three runs (reference, stopped, resumed)
def test_resume_from_a_stop_is_exact(tables, tmp_path, monkeypatch):
    """Stopped (as if by SIGTERM) at step 4, the first step after epoch 1's evaluation; resumed, the run ends
    with the weights, evaluations and thresholds of the uninterrupted one."""
    from safetensors.torch import load_file
    from test_scale import assert_resumed_exactly

    from scilm.training import load_config, train
    from scilm.training.trainer import SIGNAL_FAULT_ENV, RunInterrupted

    torch.set_num_threads(1)

    def run(out: Path, resume: bool = False) -> dict:
        metrics = train(load_config(None, base_settings(tables, out, epochs=2.0, batch_size=8, save_every=2,
                                                        resume=resume)))
        return {**metrics, "weights": load_file(out / "model" / "model.safetensors")}

    reference = run(tmp_path / "reference")
    monkeypatch.setenv(SIGNAL_FAULT_ENV, "4")
    with pytest.raises(RunInterrupted):
        run(tmp_path / "stopped")
    monkeypatch.delenv(SIGNAL_FAULT_ENV)
    resumed = run(tmp_path / "stopped", resume=True)
    assert resumed["resumed_from_step"] == 4
    assert_resumed_exactly(resumed, reference)
    assert resumed["thresholds"] == reference["thresholds"]


# -- bad input: one line naming file, line and field; exit 2; nothing written -------------------------

def cli_train(tables, out: Path, *extra) -> list:
    return ["train", "--task", "multilabel", "--data", tables[0], "--valid", tables[1], "--model", "esm2-tiny",
            "--max-steps", "1", "--no-progress", "--out", out, *extra]


def test_an_unknown_label_column_is_one_line_naming_file_and_column(tables, run_cli, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*cli_train(tables, out, "--label-columns", "Nucleus,Cytosol"))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tables[0]}: no label column 'Cytosol' (--label-columns); columns are: {', '.join(HEADER)}"]
    assert not out.exists()


@pytest.mark.parametrize("value", ["2", "yes", "0.5"])
def test_a_value_other_than_0_or_1_names_file_line_and_column(tables, run_cli, tmp_path, value):
    rows = synthetic_rows(6, 5)
    rows[2][4] = value  # line 4 (header is line 1), column Nucleus
    bad = write_table(tmp_path / "bad.csv", rows)
    out = tmp_path / "run"
    result = run_cli(*cli_train((bad, tables[1]), out))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}:4 (record P2): column 'Nucleus' holds {value!r}; label columns hold 0 or 1"]
    assert not out.exists()


def test_a_missing_label_is_an_error_or_dropped_and_counted(tables, run_cli, tmp_path):
    rows = synthetic_rows(8, 6)
    rows[1][5] = "NA"  # Cell membrane of P1, line 3
    table = write_table(tmp_path / "missing.csv", rows)
    result = run_cli(*cli_train((table, tables[1]), tmp_path / "a"))
    assert result.exit_code == 2 and not (tmp_path / "a").exists()
    assert result.stderr.strip().startswith(f"error: {table}:3 (record P1): missing label 'NA' in column "
                                            "'Cell membrane'")
    result = run_cli(*cli_train((table, tables[1]), tmp_path / "b", "--drop-missing-labels"))
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["n_train"] == 7 and metrics["n_dropped_missing_label"] == 1


def test_settings_that_do_not_fit_are_one_line(tables, run_cli, tmp_path):
    out = tmp_path / "run"
    no_locations = write_table(tmp_path / "plain.csv", [[r[0], r[1], r[3], r[4]] for r in synthetic_rows(4, 7)],
                               ["sid", "Sequence", "a", "b"])
    cases = [
        (cli_train((no_locations, no_locations), out),
         f"error: {no_locations}: no --label-columns given and not the DeepLoc-2 location columns"),
        (cli_train(tables, out, "--label-columns", "Nucleus"),
         "error: --label-columns 'Nucleus': a multi-label task needs at least two label columns"),
        (cli_train(tables, out, "--label-column", "Nucleus"),
         "error: --label-column: not a setting of task 'multilabel'"),
        (cli_train((Path("x.fasta"), tables[1]), out, "--label-columns", "a,b"),
         "error: x.fasta: task multilabel trains on a CSV/TSV table"),
    ]
    for args, start in cases:
        result = run_cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.stderr, args
        assert result.stderr.strip().startswith(start) and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr
    assert not out.exists()
    # the two named columns train (no DeepLoc-2 names needed)
    result = run_cli(*cli_train((no_locations, no_locations), out, "--label-columns", "a, b"))
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["labels"] == ["a", "b"]


def test_the_bench_row_is_skipped_without_the_shared_data(tmp_path, monkeypatch):
    from scilm.bench import tasks

    monkeypatch.setattr(tasks, "SHARED", tmp_path / "absent")
    assert "multilabel" in tasks.ROWS and tasks.multilabel(tmp_path, quick=True) is None


# -- scilm evaluate ------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_is_sklearns_on_its_predictions_at_the_saved_thresholds_and_at_half(trained, tables, run_cli,
                                                                                   tmp_path):
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        jaccard_score,
        matthews_corrcoef,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", trained / "model", "--data", tables[1], "--id-column", "sid",
                     "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_label_f1.png", "predictions.csv"]
    assert (out / "per_label_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem_type"] == "multi_label_classification" and metrics["labels"] == LABELS
    run = json.loads((trained / "metrics.json").read_text())
    assert metrics["thresholds"] == run["thresholds"]
    # predictions.csv: the data's set, then exactly what scilm predict writes for the same file
    assert run_cli("predict", "--model", trained / "model", "--data", tables[1], "--id-column", "sid",
                   "--out", tmp_path / "p.csv").exit_code == 0
    predicted_rows, rows = (read_rows(tmp_path / "p.csv"), read_rows(out / "predictions.csv"))
    assert [{k: v for k, v in r.items() if k != "labels"} for r in rows] == predicted_rows
    ids, truth = truth_of(tables[1])
    assert [r["id"] for r in rows] == ids
    assert [r["labels"] for r in rows] == [";".join(l for l, on in zip(LABELS, row) if on) for row in truth]
    tuned = np.array([[int(label in r["predicted_labels"].split(";")) for label in LABELS] for r in rows])
    probabilities = np.array([[float(r[f"prob_{label}"]) for label in LABELS] for r in rows])
    half = (probabilities >= 0.5).astype(int)
    assert (tuned != half).any()  # the saved thresholds matter on this set: the two blocks can differ
    for reported, predicted in ((metrics, tuned), (metrics["at_0.5"], half)):
        assert reported["subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
        assert reported["jaccard"] == pytest.approx(
            jaccard_score(truth, predicted, average="samples", zero_division=1.0), abs=1e-12)
        assert reported["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"), abs=1e-12)
        assert reported["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0),
                                                     abs=1e-12)
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, zero_division=0)
        confusion = multilabel_confusion_matrix(truth, predicted)
        for j, label in enumerate(LABELS):
            mcc = matthews_corrcoef(truth[:, j], predicted[:, j])
            assert reported[f"mcc_{label}"] == pytest.approx(mcc, abs=1e-12)
            assert reported["per_label"][label] == pytest.approx(
                {"precision": precision[j], "recall": recall[j], "f1": f1[j], "mcc": mcc,
                 "tp": confusion[j, 1, 1], "fp": confusion[j, 0, 1], "fn": confusion[j, 1, 0],
                 "tn": confusion[j, 0, 0]}, abs=1e-12)
    assert metrics["counts"] == dict(zip(LABELS, truth.sum(0).tolist())) == run["positive_counts"]["valid"]
    assert metrics["n_predicted"] == dict(zip(LABELS, tuned.sum(0).tolist()))
    # the same validation file and weights: at 0.5 these are the run's own eval_* metrics
    for key in ("subset_accuracy", "jaccard", "micro_f1", "macro_f1", *[f"mcc_{label}" for label in LABELS]):
        assert metrics["at_0.5"][key] == pytest.approx(run[f"eval_{key}"], abs=1e-6), key


def test_evaluate_reads_the_label_columns_by_name_in_any_order(trained, tables, run_cli, tmp_path):
    with open(tables[1], newline="") as handle:
        rows = list(csv.DictReader(handle))
    order = ["Peroxisome", "Sequence", "Nucleus", "extra", "Cytoplasm", "sid", "Cell membrane"]
    shuffled = tmp_path / "shuffled.tsv"
    with open(shuffled, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(order)
        writer.writerows([[r.get(column, "x") for column in order] for r in rows])
    results = []
    for data, out in ((tables[1], tmp_path / "a"), (shuffled, tmp_path / "b")):
        assert run_cli("evaluate", "--model", trained / "model", "--data", data, "--id-column", "sid",
                       "--out", out).exit_code == 0
        metrics = json.loads((out / "metrics.json").read_text())
        results.append({k: v for k, v in metrics.items() if k != "data"})
    assert results[0] == results[1]


@pytest.mark.parametrize("case", ["missing column", "label column", "bad value", "fasta", "mask column"])
def test_evaluate_bad_input_is_one_line_and_writes_nothing(trained, tables, run_cli, tmp_path, case):
    rows = synthetic_rows(6, 7)
    extra = []
    if case == "missing column":
        data = write_table(tmp_path / "d.csv", [r[:6] + r[7:] for r in rows], [c for c in HEADER if c != "Peroxisome"])
        expected = f"error: {data}: no column 'Peroxisome' (this model's 0/1 label columns, named as in training, are"
    elif case == "label column":
        data, extra = write_table(tmp_path / "d.csv", rows), ["--label-column", "Nucleus"]
        expected = "error: --label-column 'Nucleus': a multi-label model reads its 0/1 label columns by their"
    elif case == "bad value":
        rows[3][3] = "2"  # line 5, Cytoplasm
        data = write_table(tmp_path / "d.csv", rows)
        expected = f"error: {data}:5 (record P3): column 'Cytoplasm' holds '2'; label columns hold 0 or 1"
    elif case == "mask column":
        data, extra = write_table(tmp_path / "d.csv", rows), ["--mask-column", "Partition"]
        expected = ("error: --mask-column 'Partition': a per-residue mask, but this is a multi_label_classification "
                    "model")
    else:
        data = tmp_path / "d.fasta"
        data.write_text(">P1 Cytoplasm-S\nMKTAYIAK\n")
        expected = f"error: {data}: a multi-label model is evaluated on a CSV/TSV table"
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", trained / "model", "--data", data, "--out", out, *extra)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not out.exists()
