"""`scilm bench tasks`: the table and results from registered rows (the rows themselves are real runs: slow)."""

from __future__ import annotations

import json

import pytest

from scilm.bench import tasks


def test_rows_become_a_table_with_their_baselines_and_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "ROWS", {})
    tasks.row("good")(lambda out, quick: {"task": "good", "data": "d", "n_train": 10, "n_valid": 5,
                                          "metric": "accuracy", "value": 0.8, "baseline": 0.6, "seconds": 1.0})
    tasks.row("worse")(lambda out, quick: {"task": "worse", "data": "d", "n_train": 10, "n_valid": 5,
                                           "metric": "Spearman", "value": -0.1, "baseline": 0.0, "seconds": 2.0})
    tasks.row("absent")(lambda out, quick: None)
    table = tasks.run_tasks_bench(tmp_path, quick=True, command="scilm bench tasks --quick")
    lines = table.splitlines()
    assert "| good | d | 10 | 5 | accuracy | 0.800 | 0.600 | yes | 1 |" in lines
    assert "| worse | d | 10 | 5 | Spearman | -0.100 | 0.000 | **no** | 2 |" in lines
    assert any(line.startswith("| absent | its data is not here") for line in lines)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["task"] for r in results["rows"]] == ["good", "worse", "absent"] and results["quick"] is True
    with pytest.raises(Exception, match="unknown bench row"):
        tasks.run_tasks_bench(tmp_path, only=["nope"])


@pytest.mark.slow
def test_the_regression_row_runs_on_the_bundled_gb1(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "_common", lambda quick: {"model": "esm2-tiny-mlm", "batch_size": 32, "lr": 1e-3,
                                                         "progress": False, "overwrite": True, "max_steps": 3})
    result = tasks.regression(tmp_path, quick=True)
    assert result["n_train"] == 2691 and result["n_valid"] == 299 and result["baseline"] == 0.0


def test_the_majority_baseline_is_the_training_majority_scored_on_validation():
    """Training's majority (membrane) is validation's minority: 2 of 10, not validation's own 8 of 10."""
    counts = {"train": {"soluble": 10, "membrane": 30}, "valid": {"soluble": 8, "membrane": 2}}
    assert tasks.majority_baseline(counts) == pytest.approx(2 / 10)
    # a training tie goes to the first class in the model's order (numpy.argmax's rule), a class absent from
    # validation scores 0
    tie = {"train": {"a": 5, "b": 5, "c": 1}, "valid": {"b": 3, "c": 1}}
    assert tasks.majority_baseline(tie) == 0.0
    assert tasks.majority_baseline({"train": {"a": 4, "b": 5}, "valid": {"a": 1, "b": 3}}) == pytest.approx(3 / 4)


def test_classification_rows_take_the_training_majority(tmp_path, monkeypatch):
    """The membrane and localization rows pass the run's label_counts through majority_baseline."""
    run = {"n_train": 40, "n_eval": 10, "eval_accuracy": 0.5,
           "label_counts": {"train": {"soluble": 10, "membrane": 30}, "valid": {"soluble": 8, "membrane": 2}}}
    monkeypatch.setattr(tasks, "run_train", lambda config, workdir: run)
    for function in (tasks.membrane, tasks.localization):
        assert function(tmp_path, quick=True)["baseline"] == pytest.approx(0.2)
