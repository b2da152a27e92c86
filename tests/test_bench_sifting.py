"""`scilm bench sifting` end to end on tiny slices, and its time-to-target arithmetic."""

from __future__ import annotations

import json

from scilm.bench.sifting import SiftingSettings, run_sifting_bench, time_to_reach


def test_time_to_reach_takes_the_first_evaluation_at_target():
    history = [{"train_seconds": 10, "eval_accuracy": 0.70}, {"train_seconds": 20, "eval_accuracy": 0.81},
               {"train_seconds": 30, "eval_accuracy": 0.79}]
    assert time_to_reach(history, 0.80) == 20
    assert time_to_reach(history, 0.90) is None


def test_sifting_bench_writes_every_run(tmp_path, tiny_fastas):
    settings = SiftingSettings(warm_epochs=0.5, epochs=1, truncate=32, batch_size=8,
                               sift_delay=1, sift_history=50, betas=(1.0, 3.0), reuse_beta=1.0)
    table = run_sifting_bench(tmp_path, settings=settings, train_fasta=tiny_fastas[0],
                              valid_fasta=tiny_fastas[1], isolate=False)
    results = json.loads((tmp_path / "results.json").read_text())
    names = [r["run"] for r in results["rows"]]
    assert names[:4] == ["baseline", "relative beta=1", "relative beta=3", "reuse beta=1"]
    assert names[4].startswith("random beta=")
    baseline = results["rows"][0]
    assert baseline["keep_rate"] == 1.0 and baseline["time_vs_baseline"] == 1.0
    assert all(r["keep_rate"] < 1.0 for r in results["rows"][1:3])
    assert "Machine:" in table and (tmp_path / "accuracy_vs_time.png").stat().st_size > 1000
