"""The per-residue recipe (issue 13 task 3): labels aligned to residues, masked/special positions never
counted, metrics against scikit-learn recomputed from `scilm predict`, truncation keeping labels aligned,
token-weighted loss under gradient accumulation, bad label strings and masks, SignalP-6 FASTA, LoRA, resume.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# the recorder of test_invariants_training (every ScilmTrainer's steps, plain SGD) and its checks
from test_invariants_training import (  # noqa: F401 (fixtures)
    SPLITS,
    assert_same_training,
    finish,
    model_at_start,
    recorder,
    single_thread,
    whole_window,
)

AMINO = "ACDEFGHIKLMNPQRSTVWY"
TRUNCATE = 40


def secondary(sequence: str) -> str:
    """A learnable per-residue rule (a stand-in for H/E/C): hydrophobic H, charged E, else C."""
    return "".join("H" if c in "AILMFVW" else "E" if c in "DEKR" else "C" for c in sequence)


def write_table(path: Path, n: int, seed: int, lengths: tuple[int, int] = (12, 60)) -> Path:
    """A TSV ``id, sequence, ss3, mask`` of ``n`` random proteins with ~15% of residues masked (0)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["id", "sequence", "ss3", "mask"])
        for i in range(n):
            sequence = "".join(rng.choice(AMINO) for _ in range(rng.randint(*lengths)))
            mask = "".join("0" if rng.random() < 0.15 else "1" for _ in sequence)
            writer.writerow([f"{path.stem}{i}", sequence, secondary(sequence), mask])
    return path


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


TABLE_SETTINGS = {"sequence_column": "sequence", "label_column": "ss3", "mask_column": "mask", "id_column": "id"}


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("residue")
    return write_table(root / "train.tsv", 32, 1), write_table(root / "valid.tsv", 12, 2)


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory) -> tuple[Path, dict]:
    """A short run (imperfect predictions: the metrics checks can fail), truncating at TRUNCATE residues."""
    from scilm.training import train
    from scilm.training.recipes.residue.config import Config

    out = tmp_path_factory.mktemp("run") / "run"
    metrics = train(Config(data=str(tables[0]), valid=str(tables[1]), **TABLE_SETTINGS, model="esm2-tiny",
                           max_steps=6, batch_size=8, lr=2e-3, truncate=TRUNCATE, progress=False,
                           out=str(out)).validate())
    return out, metrics


def scored(rows: list[dict], predicted: dict[str, str], classes: list[str]):
    """(true, predicted) class ids of the scored residues (mask 1, within TRUNCATE), and per protein."""
    y_true, y_pred, proteins = [], [], []
    for row in rows:
        pairs = [(classes.index(t), classes.index(p)) for i, (t, p, m) in
                 enumerate(zip(row["ss3"], predicted[row["id"]], row["mask"])) if m == "1" and i < TRUNCATE]
        y_true += [t for t, _ in pairs]
        y_pred += [p for _, p in pairs]
        if pairs:
            proteins.append(all(t == p for t, p in pairs))
    return np.array(y_true), np.array(y_pred), proteins


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_predict_writes_one_label_per_residue_and_marks_the_cut_tail(trained, tables, run_cli, tmp_path):
    out, _ = trained
    rows = read_table(tables[1])
    assert any(len(r["sequence"]) > TRUNCATE for r in rows)  # the cut is exercised
    result = run_cli("predict", "--model", out / "model", "--data", tables[1], "--sequence-column", "sequence",
                     "--id-column", "id", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.stderr
    predictions = list(read_csv(tmp_path / "p.csv"))
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    for p, r in zip(predictions, rows):
        n = len(r["sequence"])
        assert len(p["labels"]) == n == int(p["residues"])
        assert int(p["predicted"]) == min(n, TRUNCATE)  # the trained length is predict's default
        assert set(p["labels"][:TRUNCATE]) <= set("CEH") and p["labels"][TRUNCATE:] == "." * max(0, n - TRUNCATE)


def test_metrics_are_sklearns_on_the_saved_models_predictions(trained, tables, run_cli, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out, metrics = trained
    assert metrics["eval_accuracy"] == json.loads((out / "metrics.json").read_text())["eval_accuracy"]
    classes = metrics["labels"]
    assert classes == ["C", "E", "H"]
    result = run_cli("predict", "--model", out / "model", "--data", tables[1], "--sequence-column", "sequence",
                     "--id-column", "id", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.stderr
    predicted = {p["id"]: p["labels"] for p in read_csv(tmp_path / "p.csv")}
    y_true, y_pred, proteins = scored(read_table(tables[1]), predicted, classes)
    assert 0.2 < metrics["eval_accuracy"] < 1.0  # imperfect: the comparisons below can fail
    assert metrics["eval_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-9)
    assert metrics["eval_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-9)
    assert metrics["eval_mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-9)
    for i, label in enumerate(classes):
        assert metrics[f"eval_f1_{label}"] == pytest.approx(f1_score(y_true == i, y_pred == i), abs=1e-9)
    assert metrics["eval_protein_accuracy"] == pytest.approx(np.mean(proteins), abs=1e-9)
    # per-class counts of the scored residues (mask 1, within the cut), train and validation
    train_true, _, _ = scored(read_table(tables[0]), {r["id"]: r["ss3"] for r in read_table(tables[0])}, classes)
    assert metrics["residue_counts"] == {
        "train": {c: int(np.sum(train_true == i)) for i, c in enumerate(classes)},
        "valid": {c: int(np.sum(y_true == i)) for i, c in enumerate(classes)}}
    majority = int(np.argmax(np.bincount(train_true, minlength=3)))
    assert metrics["eval_baseline_accuracy"] == pytest.approx(np.mean(y_true == majority), abs=1e-12)
    # the amino-acid rule is exactly the labelling rule: its baseline is perfect
    assert metrics["eval_baseline_residue_type_accuracy"] == 1.0
    rows = read_table(tables[1])
    assert metrics["truncated"]["valid"] == {
        "records_cut": sum(len(r["sequence"]) > TRUNCATE for r in rows),
        "scored_residues_cut": sum(r["mask"][TRUNCATE:].count("1") for r in rows)}


def test_labels_sit_on_their_residues_and_specials_padding_and_masks_are_minus_100(tables):
    from scilm.data.residue import read_residues
    from scilm.models.protein import esm2_tokenizer
    from scilm.training.recipes.residue.recipe import encode_residues

    records = read_residues(tables[0], **TABLE_SETTINGS)
    examples, cut = encode_residues(records, esm2_tokenizer(), TRUNCATE, ["C", "E", "H"])
    tokenizer = esm2_tokenizer()
    for record, example in zip(records, examples):
        kept = min(len(record.sequence), TRUNCATE)
        tokens = tokenizer.convert_ids_to_tokens(example["input_ids"])
        assert tokens[0] == "<cls>" and tokens[-1] == "<eos>" and "".join(tokens[1:-1]) == record.sequence[:kept]
        expected = [-100] + ["CEH".index(t) if m == "1" else -100
                             for t, m in zip(record.label[:kept], record.mask[:kept])] + [-100]
        assert example["labels"] == expected
    assert cut["records_cut"] == sum(len(r.sequence) > TRUNCATE for r in records) > 0


def test_metrics_function_against_sklearn_with_padding_and_signal_types():
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    from scilm.training.recipes.residue.recipe import residue_metrics, signalp_type

    classes = ["I", "O", "S", "L"]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(20, 15))  # I/O, and a signal-peptide region (S or L) in some proteins
    for row, region in zip(range(20), rng.integers(0, 3, size=20)):
        labels[row, 1:6] = labels[row, 1:6] if region == 0 else region + 1
    labels[:, 0] = -100
    labels[rng.random(labels.shape) < 0.2] = -100
    labels[3] = -100  # a protein with nothing scored does not count
    predicted = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 4, size=labels.shape))
    predicted[labels == -100] = rng.integers(0, 4, size=int((labels == -100).sum()))  # never counted
    got = residue_metrics(predicted, labels, classes, majority=1, signal_types=True)
    keep = labels != -100
    t, p = labels[keep], predicted[keep]
    assert got["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert got["f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(t, p))
    assert got["baseline_accuracy"] == pytest.approx(np.mean(t == 1))
    rows = [i for i in range(20) if i != 3]
    assert got["protein_accuracy"] == pytest.approx(np.mean([(labels[i][keep[i]] == predicted[i][keep[i]]).all()
                                                             for i in rows]))
    true_type = [signalp_type([classes[c] for c in labels[i][keep[i]]]) for i in rows]
    pred_type = [signalp_type([classes[c] for c in predicted[i][keep[i]]]) for i in rows]
    assert got["type_accuracy"] == pytest.approx(accuracy_score(true_type, pred_type))
    assert got["type_mcc"] == pytest.approx(matthews_corrcoef(true_type, pred_type))
    assert len(set(true_type)) > 2 and got["type_accuracy"] < 1  # the comparison can fail
    assert signalp_type(list("SSSSIIOO")) == "SP" and signalp_type(list("IIOOM")) == "NO_SP"
    assert signalp_type(list("LLLSS")) == "LIPO"


# -- gradient accumulation ----------------------------------------------------------------------------

def test_residue_accumulation_changes_nothing(recorder, tmp_path):  # noqa: F811 (the imported fixture)
    """Batch 4 x 1 = 2 x 2 = 1 x 4 (6 proteins of uneven lengths and masks: a ragged last window): the same
    loss, gradients and weights; step 1's loss is the cross-entropy mean over the window's scored residues."""
    from scilm.training import train
    from scilm.training.recipes.residue.config import Config

    train_path = write_table(tmp_path / "train.tsv", 6, 3, lengths=(5, 45))
    valid_path = write_table(tmp_path / "valid.tsv", 3, 4, lengths=(5, 30))
    runs = []
    for b, g in SPLITS:
        config = Config(data=str(train_path), valid=str(valid_path), **TABLE_SETTINGS, out=str(tmp_path / f"{b}x{g}"),
                        batch_size=b, grad_accum=g, warmup_ratio=0.0, lr=1e-2, progress=False,
                        model="esm2-tiny").validate()
        runs.append(finish(recorder, train(config)))
    assert_same_training(runs)
    run = runs[0]
    batch = whole_window(run, 1, pad_id=1)
    with torch.no_grad():
        logits = model_at_start(run)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 batch["labels"].reshape(-1), ignore_index=-100)
    assert run.losses[1] == pytest.approx(float(expected), rel=1e-5)


# -- bad input: one line naming file, line and field; exit 2; nothing written ---------------------------

def _table(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("id\tsequence\tss3\tmask\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


GOOD = [("A", "MKTAYIAK", "CCHHHHCC", "11111111"), ("B", "MKVLAAGI", "CEEHHHCC", "01111110"),
        ("C", "MKWWLLAA", "CCHHHHHH", "11111111"), ("D", "MKAAAAAA", "CEHHHHHH", "11111111")]


@pytest.mark.parametrize("bad, extra, message", [
    (("B", "MKVLAAGI", "CEEHHHC", "01111110"), (), "--label-column 'ss3' has 7 label(s) for 8 residues"),
    (("B", "MKVLAAGI", "CEEHHHCC", "0111111"), (), "--mask-column 'mask' has 7 character(s) for 8 residues"),
    (("B", "MKVLAAGI", "CEEHHHCC", "01111112"), (), "--mask-column 'mask' holds '2' (U+0032 DIGIT TWO) at residue 8"),
    (("B", "MKVLAAGI", "CEEHXHCC", "01111110"), ("--label-alphabet", "HEC"),
     "--label-column 'ss3' holds unknown label character 'X' (U+0058 LATIN CAPITAL LETTER X) at residue 5"),
    (("B", "MKVLAAGI", "CEE.HHCC", "01111110"), (), "--label-column 'ss3' holds unknown label character '.'"),
])
def test_bad_label_strings_and_masks_are_one_line_naming_file_line_and_field(run_cli, tmp_path, bad, extra, message):
    table = _table(tmp_path / "t.tsv", [GOOD[0], bad, *GOOD[2:]])
    out = tmp_path / "run"
    result = run_cli("train", "--task", "residue", "--data", table, "--sequence-column", "sequence",
                     "--label-column", "ss3", "--mask-column", "mask", "--id-column", "id", *extra, "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: {table}:3 (record B): {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_validation_label_unseen_in_training_is_one_line(run_cli, tmp_path):
    train = _table(tmp_path / "train.tsv", GOOD)
    valid = _table(tmp_path / "valid.tsv", [("V", "MKVLAAGI", "CEEGHHCC", "11111111")])
    result = run_cli("train", "--task", "residue", "--data", train, "--valid", valid, "--sequence-column", "sequence",
                     "--label-column", "ss3", "--id-column", "id", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {valid}:2 (record V): --label-column 'ss3' holds unknown label character "
                                     "'G' (U+0047 LATIN CAPITAL LETTER G) at residue 4 (allowed: the label alphabet "
                                     "'CEH')")
    assert not (tmp_path / "run").exists()


SIGNALP = [  # 3-line records as in PEFT-SP's train_set.fasta (CRLF line ends)
    (">P1|EUKARYA|SP|0", "MKKLLLALLAVASAQAEDKT", "SSSSSSSSSSSSOOOOOOOO"),
    (">P2|NEGATIVE|NO_SP|1", "MDEKRTGHQNPSDEKRTGHQ", "IIIIIIIIIIIIIIIIIIII"),
    (">P3|POSITIVE|LIPO|0", "MKKLLAVLLSGCSSDKTEAQ", "LLLLLLLLLLLOOOOOOOOO"),
    (">P4|EUKARYA|NO_SP|0", "MSTNPKDEQRGHMMLLVVAA", "IIIIIIIIIIIIMMMMMMMM"),
    (">P5|EUKARYA|SP|2", "MRRLLLALLAVASAQAEDKT", "SSSSSSSSSSSSOOOOOOOO"),
    (">P6|NEGATIVE|NO_SP|2", "MDEKRTGHQNPSDEKRTGAA", "IIIIIIIIIIIIIIIIIIII"),
]


def test_signalp_fasta_trains_with_partition_splits_and_protein_types(run_cli, tmp_path):
    fasta = tmp_path / "signalp.fasta"
    fasta.write_bytes("".join(f"{h}\r\n{s}\r\n{l}\r\n" for h, s, l in SIGNALP).encode())
    out = tmp_path / "run"
    result = run_cli("train", "--task", "residue", "--data", fasta, "--split-column", "partition",
                     "--valid-split", "2", "--model", "esm2-tiny", "--max-steps", "2", "--batch-size", "2",
                     "--no-progress", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_eval"]) == (4, 2)
    assert metrics["labels"] == ["I", "L", "M", "O", "S"]
    assert metrics["type_counts"] == {"train": {"SP": 1, "NO_SP": 2, "LIPO": 1}, "valid": {"SP": 1, "NO_SP": 1}}
    assert "eval_type_accuracy" in metrics and "eval_type_mcc" in metrics


@pytest.mark.parametrize("record, message", [
    ((">P9|EUKARYA|SP|0", "MKKLLLALLA", "SSSSSSOOO"), ":3 (record P9): the label line has 9 label(s) for 10 residues"),
    ((">P9|EUKARYA|SP", "MKKLLLALLA", "SSSSSSOOOO"), ":1: header has 3 '|'-separated field(s)"),
    ((">P9|EUKARYA|SP|0", "MKKLLLALLA", ">P8|EUKARYA|SP|0"), ":1 (record P9): a record is 3 lines"),
])
def test_bad_signalp_records_are_one_line(run_cli, tmp_path, record, message):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text("\n".join(record) + "\n" + "\n".join(SIGNALP[1]) + "\n")
    result = run_cli("train", "--task", "residue", "--data", fasta, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: {fasta}{message}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_table_columns_on_a_fasta_file_are_an_error(run_cli, tmp_path):
    fasta = tmp_path / "signalp.fasta"
    fasta.write_text("".join(f"{h}\n{s}\n{l}\n" for h, s, l in SIGNALP))
    result = run_cli("train", "--task", "residue", "--data", fasta, "--mask-column", "mask", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--mask-column name table columns" in result.stderr


def test_per_protein_prediction_refuses_a_per_residue_model(trained):
    from scilm.errors import ScilmError
    from scilm.inference.predict import predict_proteins
    from scilm.models.protein import load_trained_classifier

    model, tokenizer = load_trained_classifier(str(trained[0] / "model"))
    with pytest.raises(ScilmError, match="per-residue model"):
        predict_proteins(model, tokenizer, ["MKTAYIAK"])


# -- efficiency switches: LoRA, exact resume -------------------------------------------------------------

def test_lora_run_trains_adapters_and_predicts_per_residue(tables, run_cli, tmp_path):
    out = tmp_path / "lora"
    result = run_cli("train", "--task", "residue", "--data", tables[0], "--valid", tables[1], "--sequence-column",
                     "sequence", "--label-column", "ss3", "--mask-column", "mask", "--id-column", "id", "--lora",
                     "--model", "esm2-tiny", "--max-steps", "2", "--batch-size", "8", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 4
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"
    result = run_cli("predict", "--model", out / "model", "--data", tables[1], "--sequence-column", "sequence",
                     "--id-column", "id", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.stderr
    rows = list(read_csv(tmp_path / "p.csv"))
    assert [len(p["labels"]) for p in rows] == [len(r["sequence"]) for r in read_table(tables[1])]


@pytest.mark.slow
def test_resume_after_a_stop_is_exact(tmp_path, monkeypatch):
    """Stopped (as if by SIGTERM) mid-epoch and at an epoch's end, then resumed: the same weights bit for bit."""
    from test_scale import assert_resumed_exactly

    from scilm.training import checkpoints
    from scilm.training.trainer import SIGNAL_FAULT_ENV, RunInterrupted

    train_path = write_table(tmp_path / "train.tsv", 12, 5, lengths=(8, 30))
    valid_path = write_table(tmp_path / "valid.tsv", 4, 6, lengths=(8, 30))

    def run(out: Path, resume: bool = False) -> dict:
        from safetensors.torch import load_file

        from scilm.training.recipes.residue.config import Config
        from scilm.training.recipes.residue.recipe import run as train_residue

        metrics = train_residue(Config(data=str(train_path), valid=str(valid_path), **TABLE_SETTINGS, out=str(out),
                                       resume=resume, model="esm2-tiny", batch_size=4, save_every=2, epochs=2,
                                       lr=1e-3, warmup_ratio=0.25, progress=False).validate())
        return {**metrics, "weights": load_file(out / "model" / "model.safetensors")}

    reference = run(tmp_path / "reference")
    for stop in (2, 3):  # 3 steps per epoch: mid-epoch, and the epoch's last step (before its evaluation)
        out = tmp_path / f"stop{stop}"
        monkeypatch.setenv(SIGNAL_FAULT_ENV, str(stop))
        with pytest.raises(RunInterrupted):
            run(out)
        monkeypatch.delenv(SIGNAL_FAULT_ENV)
        assert checkpoints.latest_complete(out / "checkpoints").name == f"checkpoint-{stop}"
        resumed = run(out, resume=True)
        assert resumed["resumed_from_step"] == stop
        assert_resumed_exactly(resumed, reference)


def test_the_bundled_ss3_slice_reads_as_its_readme_says():
    import gzip
    import hashlib
    from collections import Counter

    from conftest import BUNDLED

    from scilm.data.residue import read_residues

    path = BUNDLED / "flip_ss3" / "ss3_slice.tsv.gz"
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() in (BUNDLED / "README.md").read_text()
    assert path.stat().st_size < 1_000_000 and (path.parent / "LICENSE.FLIP-AFL-3.0.txt").is_file()
    records = read_residues(path, **{**TABLE_SETTINGS, "split_column": "split"})
    assert Counter(r.split for r in records) == {"train": 600, "val": 150, "test": 150}
    assert {c for r in records for c in r.label} == set("HEC") and all(set(r.mask) <= set("01") for r in records)


# -- scilm evaluate ------------------------------------------------------------------------------

EVAL_COLUMNS = ("--sequence-column", "sequence", "--label-column", "ss3", "--mask-column", "mask", "--id-column", "id")


def test_evaluate_is_sklearns_on_its_predictions_and_the_runs_own(trained, tables, run_cli, tmp_path):
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        matthews_corrcoef,
    )

    out, run = trained
    result = run_cli("evaluate", "--model", out / "model", "--data", tables[1], *EVAL_COLUMNS, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["confusion_matrix.png", "metrics.json",
                                                                  "predictions.csv"]
    assert (tmp_path / "e" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    classes = ["C", "E", "H"]
    assert metrics["problem_type"] == "token_classification" and metrics["labels"] == classes == run["labels"]
    # predictions.csv: scilm predict's columns for the same file, then the data's labels and mask
    assert run_cli("predict", "--model", out / "model", "--data", tables[1], "--sequence-column", "sequence",
                   "--id-column", "id", "--out", tmp_path / "p.csv").exit_code == 0
    rows, data = read_csv(tmp_path / "e" / "predictions.csv"), read_table(tables[1])
    assert [{k: r[k] for k in ("id", "residues", "predicted", "labels")} for r in rows] == read_csv(tmp_path / "p.csv")
    assert [(r["data_labels"], r["mask"]) for r in rows] == [(d["ss3"], d["mask"]) for d in data]
    # sklearn on the counted residues: mask 1 and predicted (not '.', i.e. within TRUNCATE)
    y_true, y_pred, proteins = scored(data, {r["id"]: r["labels"] for r in rows}, classes)
    assert metrics["n_scored"] == len(y_true) and metrics["n_proteins_scored"] == len(proteins)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert metrics["f1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro",
                                                   zero_division=0), abs=1e-12)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred), abs=1e-12)
    per_class = f1_score(y_true, y_pred, labels=[0, 1, 2], average=None, zero_division=0)
    for i, label in enumerate(classes):
        assert metrics[f"f1_{label}"] == pytest.approx(per_class[i], abs=1e-12)
        assert metrics["per_class"][label]["n"] == metrics["counts"][label] == int((y_true == i).sum())
        assert metrics["per_class"][label]["n_predicted"] == int((y_pred == i).sum())
    assert metrics["protein_accuracy"] == pytest.approx(np.mean(proteins), abs=1e-12)
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    masked = sum(d["mask"].count("0") for d in data)
    past_cut = sum(d["mask"][TRUNCATE:].count("1") for d in data)
    assert past_cut > 0 and metrics["n_masked"] == masked and metrics["n_scored_not_predicted"] == past_cut
    assert metrics["n_residues"] == metrics["n_scored"] + masked + past_cut
    # the same validation file and weights: the run's own validation metrics and per-class counts
    for key in ("accuracy", "f1", "mcc", "protein_accuracy", "f1_C", "f1_E", "f1_H"):
        assert metrics[key] == pytest.approx(run[f"eval_{key}"], abs=1e-6), key
    assert metrics["counts"] == run["residue_counts"]["valid"]


def test_evaluate_never_counts_masked_residues(trained, tables, run_cli, tmp_path):
    """Every masked residue's label swapped for another class: the same metrics; without the mask they change."""
    out, _ = trained
    data = read_table(tables[1])
    swap = {"C": "E", "E": "H", "H": "C"}
    flipped = tmp_path / "flipped.tsv"
    with open(flipped, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["id", "sequence", "ss3", "mask"])
        for d in data:
            labels = "".join(c if m == "1" else swap[c] for c, m in zip(d["ss3"], d["mask"]))
            writer.writerow([d["id"], d["sequence"], labels, d["mask"]])
    results = []
    for path, name, extra in ((tables[1], "a", EVAL_COLUMNS), (flipped, "b", EVAL_COLUMNS),
                              (flipped, "c", EVAL_COLUMNS[:4] + EVAL_COLUMNS[6:])):
        assert run_cli("evaluate", "--model", out / "model", "--data", path, *extra,
                       "--out", tmp_path / name).exit_code == 0
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    keys = ("accuracy", "f1", "mcc", "protein_accuracy", "counts", "confusion_matrix", "n_scored")
    assert {k: results[0][k] for k in keys} == {k: results[1][k] for k in keys}
    assert results[2]["n_scored"] > results[0]["n_scored"] and results[2]["accuracy"] != results[0]["accuracy"]


@pytest.mark.parametrize("case", ["unknown label", "mask length", "no mask column", "fasta columns", "bad mask"])
def test_evaluate_bad_input_is_one_line_and_writes_nothing(trained, run_cli, tmp_path, case):
    rows, extra = list(GOOD), list(EVAL_COLUMNS)
    if case == "unknown label":
        rows[1] = ("B", "MKVLAAGI", "CEEGHHCC", "01111110")
        expected = "{data}:3 (record B): --label-column 'ss3' holds unknown label character 'G'"
    elif case == "mask length":
        rows[1] = ("B", "MKVLAAGI", "CEEHHHCC", "0111111")
        expected = "{data}:3 (record B): --mask-column 'mask' has 7 character(s) for 8 residues"
    elif case == "bad mask":
        rows[1] = ("B", "MKVLAAGI", "CEEHHHCC", "0111111x")
        expected = "{data}:3 (record B): --mask-column 'mask' holds 'x'"
    elif case == "no mask column":
        extra[5] = "resolved"
        expected = "{data}: no column 'resolved' (--mask-column); columns are: id, sequence, ss3, mask"
    data = _table(tmp_path / "t.tsv", rows)
    if case == "fasta columns":
        data = tmp_path / "s.fasta"
        data.write_text("".join(f"{h}\n{s}\n{l}\n" for h, s, l in SIGNALP))
        extra = ["--mask-column", "mask"]
        expected = "{data}: --mask-column name table columns, but this is a 3-line FASTA file"
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", trained[0] / "model", "--data", data, *extra, "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + expected.format(data=data)), lines
    assert not out.exists()


# -- sifting --------------------------------------------------------------------------------------

def test_sifting_scores_each_protein_by_its_mean_residue_loss_and_trains_on_the_token_sum(tables):
    """ResidueLoss (the sifting score) is each protein's mean cross-entropy over its scored residues, and the
    training item loss (token_loss_sums) sums over them: its window mean is Transformers' token-mean loss."""
    from transformers import DataCollatorForTokenClassification

    from scilm.data.residue import read_residues
    from scilm.models.protein import load_protein_classifier
    from scilm.training.losses import token_loss_sums
    from scilm.training.recipes.residue.recipe import ResidueLoss, encode_residues

    records = read_residues(tables[1], **TABLE_SETTINGS)[:6]
    model, tokenizer = load_protein_classifier("esm2-tiny", ["C", "E", "H"], seed=1, per_residue=True)
    model.eval()
    examples, _ = encode_residues(records, tokenizer, TRUNCATE, ["C", "E", "H"])
    batch = DataCollatorForTokenClassification(tokenizer)(examples)
    with torch.no_grad():
        scores = ResidueLoss().loss(model, batch)
        output = model(**batch)
        sums, items = token_loss_sums(output, batch["labels"])
    log_p = torch.log_softmax(output.logits.double(), dim=-1).numpy()
    for row, record in enumerate(records):  # the reference: each scored residue i sits at token i + 1
        scored = [i for i, m in enumerate(record.mask[:TRUNCATE]) if m == "1"]
        losses = [-log_p[row, i + 1, "CEH".index(record.label[i])] for i in scored]
        assert int(items[row]) == len(scored)
        assert float(sums[row]) == pytest.approx(sum(losses), rel=1e-5)
        assert float(scores[row]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert float(sums.sum() / items.sum()) == pytest.approx(float(output.loss), rel=1e-5)
    assert len({round(float(s), 4) for s in scores}) > 1  # proteins get different scores: sifting can choose


def test_a_sifted_run_uses_the_residue_losses(tables, tmp_path, monkeypatch):
    from scilm.training import load_config, sifting, train
    from scilm.training.losses import token_loss_sums
    from scilm.training.recipes.residue.recipe import ResidueLoss

    built = {}
    original = sifting.build_sifting_trainer

    def spy(config, precision, out, trainer_kwargs, sift_loss, args_extra=None):
        built.update(item_loss=trainer_kwargs["item_loss"], sift_loss=sift_loss)
        return original(config, precision, out, trainer_kwargs, sift_loss, args_extra)

    monkeypatch.setattr(sifting, "build_sifting_trainer", spy)
    metrics = train(load_config(None, dict(task="residue", data=str(tables[0]), valid=str(tables[1]),
                                           **TABLE_SETTINGS, model="esm2-tiny", epochs=2.0, batch_size=4, lr=2e-3,
                                           truncate=TRUNCATE, sift_beta=1.0, sift_delay=1, progress=False,
                                           out=str(tmp_path / "sift"))))
    assert built["item_loss"] is token_loss_sums and isinstance(built["sift_loss"], ResidueLoss)
    assert metrics["sifting"]["samples_seen"] > metrics["sifting"]["samples_kept"] > 0
