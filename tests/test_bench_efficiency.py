"""`scilm bench efficiency` end to end on tiny slices: every row runs and the outputs are complete."""

from __future__ import annotations

import pytest

import json

from scilm.bench.efficiency import METHODS, EfficiencySettings, run_efficiency_bench


@pytest.mark.slow  # a real process: ~10 s
def test_efficiency_bench_writes_every_row(tmp_path, tiny_fastas):
    train_fasta, valid_fasta = tiny_fastas
    settings = EfficiencySettings(cost_samples=16, cost_truncate=48, epochs=0.3,
                                  truncate=64, batch_size=8)
    table = run_efficiency_bench(tmp_path, cost_model="esm2-tiny", settings=settings,
                                 train_fasta=train_fasta, valid_fasta=valid_fasta, isolate=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["configuration"] for r in results["rows"]] == list(METHODS)
    for row in results["rows"]:
        assert row["cost_samples_per_second"] > 0 and row["cost_peak_memory_mb"] > 0
        # the row's accuracy is its run's, a count of right answers over the 16 validation proteins
        run = json.loads((tmp_path / "runs" / f"acc-{row['configuration'].strip('+ ').replace(' ', '-').lower()}"
                          / "metrics.json").read_text())
        assert row["eval_accuracy"] == run["eval_accuracy"] and run["n_eval"] == 16
        assert abs(row["eval_accuracy"] * 16 - round(row["eval_accuracy"] * 16)) < 1e-9
        assert row["accuracy_vs_base_points"] == 100 * (row["eval_accuracy"] - results["rows"][0]["eval_accuracy"])
    lora_rows = [r for r in results["rows"] if r["switches"].get("lora")]
    assert all(r["trainable_parameters"] < results["rows"][0]["trainable_parameters"] for r in lora_rows)
    assert "all methods" in table and "Machine:" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "chart.png").stat().st_size > 1000
    # each row is a re-runnable `scilm train --config`
    assert (tmp_path / "runs" / "acc-all-methods" / "config.yaml").exists()
