"""`scilm train` / `predict` / `embed` end to end on tiny slices of the bundled data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

FAST = ["--model", "esm2-tiny", "--batch-size", "8", "--truncate", "100", "--no-progress"]
METRIC_KEYS = {"eval_accuracy", "eval_f1", "eval_mcc", "eval_auroc", "train_runtime_s",
               "train_samples_per_second", "train_tokens_per_second", "peak_memory_mb",
               "peak_memory_method", "n_train", "n_eval", "config", "versions", "global_step"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_fastas):
    """One short full fine-tune shared by the inference tests."""
    from scilm.training import TrainConfig, train

    train_fasta, valid_fasta = tiny_fastas
    out = tmp_path_factory.mktemp("run") / "base"
    metrics = train(TrainConfig(data=str(train_fasta), valid=str(valid_fasta), model="esm2-tiny",
                                out=str(out), max_steps=4, batch_size=8, truncate=100, progress=False))
    return out, metrics


def test_train_writes_metrics_and_a_loadable_model(base_run, tiny_fastas):
    out, metrics = base_run
    saved = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved)
    assert saved["n_train"] == 48 and saved["n_eval"] == 16 and saved["global_step"] == 4
    assert saved["peak_memory_method"] == "process_peak_rss" and saved["peak_memory_mb"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "soluble", 1: "membrane"}
    # the saved metrics are those of the saved model on the validation file (sklearn on its outputs)
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    from scilm.data.protein import read_proteins
    from scilm.inference import predict_proteins
    from scilm.models.protein import load_trained_classifier

    records = read_proteins(tiny_fastas[1], task="membrane")
    net, tokenizer = load_trained_classifier(str(out / "model"))
    probabilities = predict_proteins(net, tokenizer, [r.sequence for r in records], 8, 100)
    truth = np.array([r.label == "membrane" for r in records], dtype=int)
    p_membrane = np.array([p["membrane"] for p in probabilities])
    predicted = np.array([max(p, key=p.get) == "membrane" for p in probabilities], dtype=int)
    assert saved["eval_accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-9)
    assert saved["eval_f1"] == pytest.approx(f1_score(truth, predicted, zero_division=0), abs=1e-9)
    assert saved["eval_mcc"] == pytest.approx(matthews_corrcoef(truth, predicted), abs=1e-9)
    assert saved["eval_auroc"] == pytest.approx(roc_auc_score(truth, p_membrane), abs=1e-6)
    files = {p.name for p in (out / "model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)


def test_every_switch_together_with_lora(run_cli, tiny_fastas, tmp_path):
    train_fasta, valid_fasta = tiny_fastas
    out = tmp_path / "all"
    result = run_cli("train", "--data", train_fasta, "--valid", valid_fasta, "--out", out, *FAST,
                     "--max-steps", "2", "--class-weights", "--grad-accum", "2", "--grad-checkpointing",
                     "--lora", "--lora-r", "4", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    assert "eval_accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["lora"] and metrics["config"]["lr"] == 1e-3
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "model")  # plain model, no PEFT
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_predict_writes_probabilities_per_class(run_cli, base_run, tiny_fastas, tmp_path):
    out, _ = base_run
    preds = tmp_path / "preds.csv"
    result = run_cli("predict", "--model", out / "model", "--data", tiny_fastas[1], "--out", preds)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 16 and set(rows[0]) == {"id", "predicted_label", "prob_soluble", "prob_membrane"}
    for row in rows:
        assert abs(float(row["prob_soluble"]) + float(row["prob_membrane"]) - 1) < 1e-4
        assert row["predicted_label"] in ("soluble", "membrane")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_embed_is_mean_pooled_with_ids(run_cli, base_run, tiny_fastas, tmp_path, suffix):
    out, _ = base_run
    target = tmp_path / f"emb{suffix}"
    result = run_cli("embed", "--model", out / "model", "--data", tiny_fastas[1], "--out", target)
    assert result.exit_code == 0, result.stderr
    if suffix == ".npy":
        emb = np.load(target)
        ids = target.with_suffix(".ids.txt").read_text().split()
    elif suffix == ".npz":
        data = np.load(target)
        emb, ids = data["embeddings"], list(data["ids"])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(target)
        emb, ids = np.stack(table["embedding"].to_numpy(zero_copy_only=False)), table["id"].to_pylist()
    assert emb.shape == (16, 128) and len(ids) == 16 and np.isfinite(emb).all()


def test_embedding_ignores_padding_and_batching():
    """A protein's embedding is the same alone or batched with a longer one."""
    from scilm.inference import embed_proteins
    from scilm.models.protein import load_protein_encoder

    model, tokenizer = load_protein_encoder("esm2-tiny")
    alone = embed_proteins(model, tokenizer, ["MKTAYIAKQR"], batch_size=1)
    batched = embed_proteins(model, tokenizer, ["MKTAYIAKQR", "M" * 60], batch_size=2)
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)


def test_deeploc2_csv_with_partition_split(run_cli, deeploc2_csv, tmp_path):
    out = tmp_path / "csv"
    result = run_cli("train", "--data", deeploc2_csv, "--sequence-column", "Sequence", "--label-column", "Membrane",
                     "--min-length", "100", "--max-length", "512", "--split-column", "Partition",
                     "--valid-split", "4", "--out", out, *FAST, "--max-steps", "2")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(deeploc2_csv)))
    assert metrics["n_eval"] == sum(r["Partition"] == "4" and 100 <= len(r["Sequence"]) <= 512 for r in rows)
    assert metrics["n_train"] == sum(r["Partition"] != "4" and 100 <= len(r["Sequence"]) <= 512 for r in rows)
    assert metrics["labels"] == ["soluble", "membrane"]
    preds = tmp_path / "p.csv"
    assert run_cli("predict", "--model", out / "model", "--data", deeploc2_csv, "--out", preds).exit_code == 0
    assert len(list(csv.DictReader(open(preds)))) == 80


def test_localization_task_has_ten_classes(run_cli, tmp_path):
    from conftest import DEEPLOC_VALID, write_fasta
    from scilm.data.protein import read_proteins

    records = read_proteins(DEEPLOC_VALID, task="localization")
    picked, seen = [], {}
    for r in records:  # 3 of each class
        if seen.get(r.label, 0) < 3:
            seen[r.label] = seen.get(r.label, 0) + 1
            picked.append((r.id, r.label.replace(" ", ".") + "-U", r.sequence[:80]))
    data = write_fasta(tmp_path / "loc.fasta", picked)
    out = tmp_path / "loc"
    result = run_cli("train", "--data", data, "--task", "localization", "--valid-fraction", "0.34",
                     "--out", out, *FAST, "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["labels"]) == 10 and "eval_auroc" not in metrics
