"""``scilm bench serve`` with the fast path: the mode read from the server's own log line, and the
fast server compared with fp32's level by level."""

from __future__ import annotations

import json
import logging

import pytest

from scilm.bench import serve as bench_serve


def test_the_mode_is_read_from_the_line_the_server_logs(tmp_path, caplog):
    """The parser reads what serving really writes (not a hand-made string)."""
    from scilm.models.protein import load_trained_classifier
    from scilm.serving.models import _fast_path

    model_dir = bench_serve.save_random_classifier(tmp_path / "tiny", preset="esm2-tiny")
    model, tokenizer = load_trained_classifier(str(model_dir))
    with caplog.at_level(logging.INFO, logger="scilm.serving.models"):
        _fast_path(model, tokenizer, "auto", "none")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("serving in "))
    mode, detail = bench_serve.served_mode("INFO scilm.serving.models: " + line + "\n")
    assert detail == line.removeprefix("serving in ")
    assert mode in ("fp32", "bf16", "bf16-weights") and detail.startswith(f"precision {mode} (")
    assert bench_serve.served_mode("no such line") == ("fp32", "fp32")


def _rows(batching: str, mode: str, throughput: dict[int, float], args: str) -> list[dict]:
    return [dict(batching=batching, clients=c, requests=64, errors=0, throughput_rps=t, p50_ms=1000 / t,
                 p99_ms=2000 / t, mean_batch=1.0, rss_start_mb=500.0, rss_end_mb=510.0, rss_flat=True,
                 server=mode if mode == "fp32" else f"auto+int8 -> {mode}", server_mode=mode, server_mode_detail=f"precision {mode} (probe s/pass: fp32 1)" if mode != "fp32"
                 else "fp32", server_args=args) for c, t in throughput.items()]


def test_fast_server_is_compared_with_fp32_level_by_level(tmp_path, monkeypatch):
    calls = []

    def fake_mode(model, batching, quick, sequences, out, fast=None):
        calls.append((batching, fast))
        if fast:
            return _rows("on", "int8-fbgemm", {1: 20.0, 8: 30.0, 32: 36.0}, "--max-batch-size 32 --precision auto "
                                                                              "--quantize int8")
        return _rows("on" if batching else "off", "fp32", {1: 10.0, 8: 12.0, 32: 12.0 if batching else 10.0},
                     "--max-batch-size 32" if batching else "--no-batching")

    monkeypatch.setattr(bench_serve, "_bench_mode", fake_mode)
    monkeypatch.setattr(bench_serve, "forward_ceiling",
                        lambda path, n: {"residues": n, "batch": 16, "batch1_seq_per_s": 1.0, "batch16_seq_per_s": 1.0,
                                         "ratio": 1.0})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    table = bench_serve.run_serve_bench(tmp_path / "out", model=str(model_dir), quick=True, precision="auto",
                                        quantize="int8")
    assert calls == [(True, None), (False, None), (True, ("auto", "int8"))]
    assert "1 clients: 2.00x fp32's throughput; p50 50 vs 100 ms, p99 100 vs 200 ms" in table
    assert "32 clients: 3.00x fp32's throughput" in table  # against fp32 batching on (12), not off (10)
    assert "Batching at 32 clients: 1.20x the unbatched throughput" in table  # fp32 rows only
    assert "| auto+int8 -> int8-fbgemm | on | 32 |" in table
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["fast_path"]["chosen"].startswith("precision int8-fbgemm")
    assert (tmp_path / "out" / "serve.png").stat().st_size > 0


def test_without_a_fast_path_two_servers_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench_serve, "_bench_mode", lambda model, batching, quick, seqs, out, fast=None: (
        calls.append(fast) or _rows("on" if batching else "off", "fp32", {1: 1.0, 8: 1.0, 32: 1.0}, "")))
    monkeypatch.setattr(bench_serve, "forward_ceiling",
                        lambda path, n: {"residues": n, "batch": 16, "batch1_seq_per_s": 1.0, "batch16_seq_per_s": 1.0,
                                         "ratio": 1.0})
    (tmp_path / "m").mkdir()
    table = bench_serve.run_serve_bench(tmp_path / "out", model=str(tmp_path / "m"), quick=True)
    assert calls == [None, None] and "Fast path" not in table


def test_a_bad_mode_is_refused_before_any_server_starts(run_cli, tmp_path):
    result = run_cli("bench", "serve", "--out", str(tmp_path / "b"), "--precision", "fp8")
    assert result.exit_code == 2 and "precision must be one of" in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_end_to_end_with_the_fast_path(tmp_path):
    model_dir = bench_serve.save_random_classifier(tmp_path / "tiny", preset="esm2-tiny")
    table = bench_serve.run_serve_bench(tmp_path / "out", model=str(model_dir), quick=True, precision="auto")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    fast = [r for r in results["rows"] if "--precision" in r["server_args"]]
    assert len(fast) == 3 and results["errors"] == 0
    assert fast[0]["server_mode"] in ("fp32", "bf16", "bf16-weights")
    assert "Fast path (`scilm serve --precision auto --quantize none`)" in table


def test_a_fast_server_that_chose_fp32_is_its_own_line_and_row(tmp_path, monkeypatch):
    """The first committed chart drew such a server and fp32's as one zig-zag line: keyed by mode, not server."""
    fp32 = _rows("on", "fp32", {1: 9.0, 8: 9.0, 32: 9.0}, "--max-batch-size 32")
    fast = _rows("on", "fp32", {1: 9.5, 8: 8.3, 32: 8.9}, "--max-batch-size 32 --precision auto --quantize int8")
    for row in fast:
        row["server"] = "auto+int8 -> fp32"
    series = bench_serve.chart_series(fp32 + fast)
    assert [label for label, _ in series.values()] == ["batching on", "batching on, auto+int8 -> fp32"]
    assert all([r["clients"] for r in picked] == [1, 8, 32] for _, picked in series.values())
