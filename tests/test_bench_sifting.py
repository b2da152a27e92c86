"""`scilm bench sifting` end to end on tiny slices, and its time-to-target arithmetic."""

from __future__ import annotations

import pytest

import json

from scilm.bench.sifting import (
    SiftingSettings,
    mean_curve,
    run_sifting_bench,
    summarise,
    time_to_reach,
    verdict,
)


def test_time_to_reach_takes_the_first_evaluation_at_target():
    curve = [(10, 0.70), (20, 0.81), (30, 0.79)]
    assert time_to_reach(curve, 0.80) == 20
    assert time_to_reach(curve, 0.90) is None


def _metrics(points: list[tuple[float, float]], keep: float = 1.0) -> dict:
    return {"eval_history": [{"train_seconds": t, "eval_accuracy": a} for t, a in points],
            "eval_accuracy": points[-1][1], "sifting": {"keep_rate": keep, "scoring_share": 0.2}}


def test_seeds_are_averaged_point_by_point_and_the_target_read_off_the_mean_curve():
    runs = [_metrics([(10, 0.70), (20, 0.80)]), _metrics([(14, 0.74), (30, 0.76)])]
    assert mean_curve(runs) == [(12, 0.72), (25, 0.78)]
    row = summarise("relative beta=1", runs, target=0.775, baseline_seconds=50)
    assert row["seconds_to_target"] == 25 and row["time_to_target_vs_baseline"] == 0.5
    assert abs(row["final_accuracy"] - 0.78) < 1e-12 and abs(row["final_accuracy_sd"] - 0.0283) < 1e-3


def test_verdict_names_the_best_run_its_control_and_both_lines_of_the_bar():
    def row(name, reach, final):
        return {"run": name, "time_to_target_vs_baseline": reach, "final_accuracy": final}

    rows = {r["run"]: r for r in [row("baseline", 1.0, 0.80), row("relative beta=1", 0.7, 0.79),
                                  row("relative beta=2", 0.6, 0.79), row("reuse beta=2", None, 0.78),
                                  row("random beta=2", 0.5, 0.80), row("reuse-random beta=2", None, 0.77)]}
    assert verdict(rows) == {"best_run": "relative beta=2", "control": "random beta=2",
                             "meets_time_bar": True, "beats_control": False}
    rows["reuse beta=2"] = row("reuse beta=2", 0.4, 0.80)
    assert verdict(rows) == {"best_run": "reuse beta=2", "control": "reuse-random beta=2",
                             "meets_time_bar": True, "beats_control": True}


@pytest.mark.slow
def test_sifting_bench_writes_every_run(tmp_path, tiny_fastas):
    settings = SiftingSettings(warm_epochs=0.5, epochs=1, truncate=32, batch_size=8,
                               sift_delay=1, sift_history=50, betas=(1.0, 3.0), reuse_beta=1.0)
    table = run_sifting_bench(tmp_path, settings=settings, train_fasta=tiny_fastas[0],
                              valid_fasta=tiny_fastas[1], isolate=False)
    results = json.loads((tmp_path / "results.json").read_text())
    names = [r["run"] for r in results["rows"]]
    assert names[:4] == ["baseline", "relative beta=1", "relative beta=3", "reuse beta=1"]
    assert names[4].startswith("random beta=") and names[5] == "reuse-random beta=1"
    assert set(results["verdict"]) == {"best_run", "control", "meets_time_bar", "beats_control"}
    baseline = results["rows"][0]
    assert baseline["keep_rate"] == 1.0 and baseline["time_vs_baseline"] == 1.0
    assert all(r["keep_rate"] < 1.0 for r in results["rows"][1:3])
    assert "Machine:" in table and "Best sifting run:" in table and (tmp_path / "accuracy_vs_time.png").stat().st_size > 1000
