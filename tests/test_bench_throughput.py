"""Issue 16, training throughput: ``scilm bench throughput`` counts tokens from the data exactly as both rows
tokenize them, the published recipe's loss is class-weighted cross-entropy, the meter counts what training
forwards see, and a real (tiny) run writes its rows, table and chart with accuracies sklearn agrees with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scilm.bench import published_recipe as R
from scilm.bench import throughput as B
from scilm.bench.runner import BUNDLED


@pytest.mark.slow  # ~5 s: both rows' tokenizers over the data
def test_useful_tokens_equal_a_recount_by_both_rows_tokenizers(tmp_path):
    from scilm.models.protein import esm2_tokenizer
    from scilm.training.recipes.protein import encode_records

    records = B.bench_records(BUNDLED / "train.fasta", 200)
    B.write_csv(tmp_path / "train.csv", records)
    import pandas as pd

    frame = pd.read_csv(tmp_path / "train.csv")
    tokenizer = esm2_tokenizer()
    for truncate in (60, 512, 5000):
        recount = sum(len(tokenizer(r.sequence, truncation=True, max_length=truncate + 2)["input_ids"])
                      for r in records)
        recipe = sum(len(x["input_ids"]) for x in R.encode(frame, tokenizer, truncate))  # the recipe's own encoding
        scilm = sum(len(x["input_ids"]) for x in encode_records(records, tokenizer, truncate, [0] * len(records)))
        assert B.useful_tokens([r.sequence for r in records], truncate) == recount == recipe == scilm
    # the recipe's CSV holds the same proteins and labels as scilm's FASTA
    assert list(frame["Sequence"]) == [r.sequence for r in records]
    assert list(frame["Membrane"]) == [int(r.label == "membrane") for r in records]
    assert {r.label for r in records} == {"membrane", "soluble"}


def test_balanced_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 1])
    np.testing.assert_allclose(R.balanced_class_weights(y, 2), compute_class_weight("balanced", classes=np.arange(2), y=y))
    with pytest.raises(ValueError, match="every class"):
        R.balanced_class_weights([0, 0], 2)


def test_recipe_loss_is_class_weighted_cross_entropy(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight
    from transformers import EsmForSequenceClassification, TrainingArguments

    from scilm.models.protein import esm2_config

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    train_labels = np.array([0] * 7 + [1] * 3)
    weights = compute_class_weight("balanced", classes=np.arange(2), y=train_labels)
    trainer = R.WeightedTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                                class_weights=R.balanced_class_weights(train_labels, 2))
    ids = torch.randint(4, 24, (4, 12))
    labels = torch.tensor([0, 1, 1, 0])
    loss = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weights, dtype=torch.float32))
    torch.testing.assert_close(loss.detach(), expected)
    assert abs(float(loss.detach()) - float(F.cross_entropy(logits, labels))) > 1e-3  # the weights matter on this batch


def test_meter_counts_training_tokens_and_clocks_to_the_last_step():
    from transformers import EsmForSequenceClassification

    from scilm.models.protein import esm2_config

    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])  # the second row padded (pad id 1)
    with B.TrainingMeter(vocab_size=33, pad_id=1) as meter:
        for _ in range(2):
            model(input_ids=ids, attention_mask=ids.ne(1).long()).logits.sum().backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=ids.ne(1).long())  # validation after the last step
    summary = meter.summary()
    assert (summary["meter_useful_tokens"], summary["computed_tokens"]) == (2 * 8, 2 * 10)
    assert (summary["train_batches"], summary["optimizer_steps"], summary["eval_forwards_in_window"]) == (2, 2, 0)
    model(input_ids=ids)  # hooks removed: nothing more is counted
    assert meter.summary()["meter_useful_tokens"] == 16


def _fake_rows():
    common = {"model": "esm2-8m", "warm_model": "esm2-tiny-mlm", "useful_tokens": 1000, "optimizer_steps": 5,
              "load_average": [1.0, 1.5], "warm_useful_tokens": 1000}
    recipe = {**common, "row": "published-recipe", "useful_tokens_per_s": 100.0, "speedup": 1.0, "speedup_cpu": 1.0,
              "computed_per_useful": 1.386,
              "train_seconds": 10.0, "process_seconds": 20.0, "peak_rss_mb": 900.0, "eval_accuracy": 0.70,
              "warm_eval_accuracy": 0.80, "accuracy_vs_recipe_points": 0.0, "warm_accuracy_vs_recipe_points": 0.0}
    scilm = {**common, "row": "scilm-train", "useful_tokens_per_s": 170.0, "speedup": 1.7, "speedup_cpu": 1.65,
             "computed_per_useful": 1.013,
             "train_seconds": 10 / 1.7, "process_seconds": 15.0, "peak_rss_mb": 950.0, "eval_accuracy": 0.705,
             "warm_eval_accuracy": 0.795, "accuracy_vs_recipe_points": 0.5, "warm_accuracy_vs_recipe_points": -0.5}
    return [recipe, scilm]


def test_table_and_json_from_fake_rows(tmp_path):
    settings = B.ThroughputSettings.for_mode(False)
    rows = _fake_rows()
    text = B.write_outputs(tmp_path, rows, settings, "scilm bench throughput --out x", False, speed_train=1746,
                           accuracy_train=1746, n_valid=1021, baseline=0.5712)
    lines = text.splitlines()
    assert lines[0].startswith("Machine: ") and "cores" in lines[0] and lines[1] == "Command: `scilm bench throughput --out x`."
    assert "| published-recipe | 100 | 1.00 | 1.00 | 1.386 | 10.0 | 20.0 | 900 | 0.700 | 0.800 | +0.0 / +0.0 |" in text
    assert "| scilm-train | 170 | 1.70 | 1.65 | 1.013 | 5.9 | 15.0 | 950 | 0.705 | 0.795 | +0.5 / -0.5 |" in text
    assert "1.70x the published recipe's useful tokens/s by the wall clock, 1.65x by CPU time (target >= 1.6x both: met)" in text
    assert "within 1: yes" in text and "training majority class scores 0.571" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in saved["rows"]] == ["published-recipe", "scilm-train"]
    assert saved["settings"]["truncate"] == 512 and saved["settings"]["batch_size"] == 8 and saved["n_valid"] == 1021
    assert saved["majority_baseline"] == 0.5712
    assert (tmp_path / "table.md").read_text() == text and (tmp_path / "throughput.png").stat().st_size > 1000
    assert "Ablation" not in text and saved["ablation"] is None


def test_the_ablation_says_what_the_cls_only_layer_is_worth(tmp_path):
    rows = _fake_rows()
    ablation = {"row": B.ABLATION, "train_seconds": 7.0, "train_cpu_seconds": 7.0, "useful_tokens_per_s": 1000 / 7,
                "eval_accuracy": 0.705, "cls_only_speedup": 7.0 / (10 / 1.7), "cls_only_speedup_cpu": 1.1,
                "load_average": [1.0, 1.0]}
    text = B.write_outputs(tmp_path, rows, B.ThroughputSettings.for_mode(False), "c", False, speed_train=1,
                           accuracy_train=1, n_valid=1, baseline=0.5, ablation=ablation)
    assert ("makes scilm-train 1.19x faster (1.10x by CPU time), accuracy after the epoch 0.7050 vs 0.7050 "
            "(the same)") in text
    assert "**different**" in B.ablation_sentence({**ablation, "eval_accuracy": 0.70}, rows[1])
    assert json.loads((tmp_path / "results.json").read_text())["ablation"]["cls_only_speedup_cpu"] == 1.1


def test_verdict_says_when_the_target_or_the_accuracy_is_missed():
    rows = _fake_rows()
    rows[1].update(speedup=1.41, warm_accuracy_vs_recipe_points=-1.5)
    line = B.verdict(rows)
    assert "1.41x" in line and "**not met**" in line and "within 1: **no**" in line
    rows[1].update(speedup=1.7, speedup_cpu=1.5, warm_accuracy_vs_recipe_points=0.9, accuracy_vs_recipe_points=-9.0)
    line = B.verdict(rows)  # a wall-clock win that CPU time does not confirm is not the target met
    assert "**not met**" in line and "within 1: yes" in line  # the random-init accuracy is not judged


def test_majority_share_against_counts():
    from scilm.data.protein import ProteinRecord

    train = [ProteinRecord(id=f"t{i}", sequence="MK", label=lab) for i, lab in enumerate(["soluble"] * 3 + ["membrane"])]
    valid = [ProteinRecord(id=f"v{i}", sequence="MK", label=lab) for i, lab in enumerate(["membrane", "soluble", "membrane"])]
    assert B.majority_share(train, valid) == pytest.approx(1 / 3)


def test_a_run_that_did_not_train_one_clean_epoch_is_refused():
    from scilm.errors import ScilmError

    good = {"meter_useful_tokens": 100, "n_train": 8, "n_eval": 4, "eval_forwards_in_window": 0}
    assert B._checked("scilm-train", good, 100, 8, 4) is good
    bad = {**good, "meter_useful_tokens": 90, "eval_forwards_in_window": 2}
    with pytest.raises(ScilmError, match=r"saw 90 non-padding tokens, one epoch of the data holds 100; 2 validation"):
        B._checked("scilm-train", bad, 100, 8, 4)
    with pytest.raises(ScilmError, match="it read 8 training / 4 validation proteins, the bench wrote 8 / 5"):
        B._checked("published-recipe", good, 100, 8, 5)


def test_unknown_model_is_refused(tmp_path):
    from scilm.errors import ScilmError

    with pytest.raises(ScilmError, match="--model must be one of esm2-8m, esm2-35m"):
        B.run_throughput_bench(tmp_path, model="esm2-1b")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_real_run_on_the_tiny_shape(tmp_path):
    """Both rows end to end in their own processes; each run's reported accuracy is sklearn's accuracy_score of
    its saved model's argmax on the validation file."""
    from sklearn.metrics import accuracy_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    settings = B.ThroughputSettings(truncate=48, speed_train=24, accuracy_train=32, valid=16, threads=1)
    text = B.run_throughput_bench(tmp_path, model="esm2-tiny", settings=settings, command="test")
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {r["row"]: r for r in saved["rows"]}
    train = B.bench_records(BUNDLED / "train.fasta", 24)
    tokens = B.useful_tokens([r.sequence for r in train], 48)
    for row in rows.values():
        assert row["useful_tokens"] == tokens and row["optimizer_steps"] == 3  # 24 proteins / batch 8
        assert row["useful_tokens_per_s"] == pytest.approx(tokens / row["train_seconds"])
        assert row["computed_per_useful"] >= 1.0
    assert rows["published-recipe"]["speedup"] == 1.0
    assert rows["scilm-train"]["speedup"] == pytest.approx(rows["published-recipe"]["train_seconds"]
                                                           / rows["scilm-train"]["train_seconds"])
    assert rows["scilm-train"]["speedup_cpu"] == pytest.approx(rows["published-recipe"]["train_cpu_seconds"]
                                                               / rows["scilm-train"]["train_cpu_seconds"])
    valid = B.bench_records(BUNDLED / "valid.fasta", 16)
    truth = [r.label for r in valid]
    for kind, key in (("speed", "eval_accuracy"), ("accuracy", "warm_eval_accuracy")):
        for row in B.ROWS:
            model_dir = tmp_path / "runs" / f"{kind}-{row}" / "run" / "model"
            model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            names = ({0: "soluble", 1: "membrane"} if row == B.RECIPE  # the recipe's Membrane column: 1 = membrane
                     else {int(i): n for i, n in model.config.id2label.items()})
            with torch.no_grad():
                predicted = [names[int(model(**tokenizer(r.sequence[:48], return_tensors="pt")).logits.argmax())]
                             for r in valid]
            assert rows[row][key] == pytest.approx(accuracy_score(truth, predicted)), (kind, row)
    ablation = saved["ablation"]  # the same training with the last layer in full: the same accuracy
    assert ablation["eval_accuracy"] == pytest.approx(rows["scilm-train"]["eval_accuracy"], abs=1e-12)
    assert ablation["cls_only_speedup"] == pytest.approx(ablation["train_seconds"] / rows["scilm-train"]["train_seconds"])
    assert "| scilm-train |" in text and sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "models", "results.json", "runs", "table.md", "throughput.png"]
