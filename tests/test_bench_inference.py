"""Issue 16: ``scilm bench inference`` writes its rows, table and chart; the real run is slow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scilm.bench import inference as B


def test_table_from_fake_rows(tmp_path):
    rows = [{"engine": "hf-eager-fp32", "residues_per_s": 200.0, "peak_rss_mb": 900.0, "guard_cosine": 1.0,
             "n_proteins": 16, "note": "", "compute_residues_per_s": 300.0, "prepare_s": 2.04},
            {"engine": "scilm-bf16", "residues_per_s": 500.0, "peak_rss_mb": 700.4, "guard_cosine": 0.999973,
             "n_proteins": 16, "note": "", "_embeddings": np.zeros((2, 2)), "done": [0, 1],
             "compute_residues_per_s": 1234.5, "prepare_s": 1.0},
            {"engine": "scilm-int8", "residues_per_s": None, "note": "skipped: torchao not installed"}]
    table = B.write_outputs(tmp_path, rows, "esm2-8m", "scilm bench inference --model esm2-8m --quick", 16, 3200)
    lines = table.splitlines()
    assert lines[0].startswith("Machine: ") and "cores" in lines[0]
    assert "`scilm bench inference --model esm2-8m --quick`" in lines[1]
    assert "| scilm-bf16 | 500 | 2.50 | 1,234 | 1.0 | 700 | 0.99997 | 16 |  |" in table
    assert "| hf-eager-fp32 | 200 | 1.00 | 300 | 2.0 | 900 | 1.00000 | 16 |  |" in table
    assert "| scilm-int8 | - | - | - | - | - | - | - | skipped: torchao not installed |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["engine"] for r in saved["rows"]] == ["hf-eager-fp32", "scilm-bf16", "scilm-int8"]
    assert not any(k.startswith("_") or k == "done" for r in saved["rows"] for k in r)
    assert (tmp_path / "table.md").read_text() == table and (tmp_path / "inference.png").stat().st_size > 1000


def test_flops_per_residue_by_hand():
    # esm2-8m: H 320, F 1280, 6 layers; one protein of 98 residues (100 tokens):
    # per token 2 x 6 x (4 x 320^2 + 2 x 320 x 1280 + 2 x 100 x 320) = 15,513,600, x 100 tokens / 98 residues
    assert B.flops_per_residue(320, 1280, 6, [100]) == pytest.approx(15_513_600 * 100 / 98)
    # two proteins: the work of each at its own length, over all residues
    two = B.flops_per_residue(320, 1280, 6, [100, 12])
    assert two == pytest.approx((15_513_600 * 100 + 12 * 12 * (409_600 + 819_200 + 2 * 12 * 320)) / 108)


def test_the_ceiling_is_written_with_its_ratio(tmp_path):
    rows = [{"engine": "hf-eager-fp32", "residues_per_s": 200.0, "n_proteins": 2, "note": ""}]
    ceiling = {"gemm_gflops": 110.0, "mflop_per_residue": 55.0, "residues_per_s": 2000.0}
    table = B.write_outputs(tmp_path, rows, "esm2-35m", "c", 2, 100, ceiling=ceiling)
    assert ("at 110 GFLOP/s; one residue costs 55.0 MFLOP" in table and "faster than 2,000 residues/s here "
            "(10.0x hf-eager-fp32" in table)
    assert json.loads((tmp_path / "results.json").read_text())["fp32_ceiling"] == ceiling


def test_cosine_rows_against_numpy():
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(B.cosine_rows(a, b), [1.0, 1 / np.sqrt(2)])


@pytest.mark.slow
def test_real_run_on_the_tiny_shape(tmp_path, monkeypatch):
    monkeypatch.delenv("SCILM_ESM_CPP_PYTHON", raising=False)
    table = B.run_inference_bench(tmp_path, model="esm2-tiny", n_proteins=6, truncate=60, budget_s=60,
                                  command="test", esm_cpp_interpreter=B.esm_cpp_python())
    rows = {r["engine"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    for engine in ("hf-eager-fp32", "hf-sdpa-fp32", "scilm-fp32", "scilm-embed-auto", "scilm-embed-auto-cached"):
        assert rows[engine]["residues_per_s"] > 0 and rows[engine]["n_proteins"] == 6, rows[engine]
    # the same weights and proteins: plain transformers, scilm fp32 and the scilm embed command agree
    for engine in ("hf-eager-fp32", "hf-sdpa-fp32"):
        assert rows[engine]["guard_cosine"] > 0.99999
    assert rows["scilm-bf16"]["guard_cosine"] >= 0.999
    assert rows["scilm-embed-auto"]["note"].startswith("`scilm embed --batch-size 16 --truncate 60 --precision auto")
    assert "precision " in rows["scilm-embed-auto-cached"]["note"] and "cached" in rows["scilm-embed-auto-cached"]["note"]
    assert {"esm.cpp-fp32", "esm.cpp-int8"} <= set(rows)
    if rows["esm.cpp-fp32"]["residues_per_s"]:  # esm.cpp read scilm's saved file: the same model
        assert rows["esm.cpp-fp32"]["guard_cosine"] > 0.9999
    assert "scilm-embed-auto" in table
    ceiling = json.loads((tmp_path / "results.json").read_text())["fp32_ceiling"]
    assert ceiling["residues_per_s"] == pytest.approx(ceiling["gemm_gflops"] * 1e3 / ceiling["mflop_per_residue"])
    assert "fp32 ceiling (measured in this run)" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inference.png", "results.json", "table.md"]


def test_no_esm_cpp_interpreter_is_said(monkeypatch):
    monkeypatch.delenv("SCILM_ESM_CPP_PYTHON", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert B.esm_cpp_python() is None
    monkeypatch.setenv("SCILM_ESM_CPP_PYTHON", "/opt/esm/bin/python")
    assert B.esm_cpp_python() == "/opt/esm/bin/python" and B.esm_cpp_python("/x/python") == "/x/python"


def test_label_agreement_counts_against_fp32(tmp_path, monkeypatch):
    """The arithmetic of the 99.5 % label guard: 1 changed label in 200 is 99.5 % (meets it), 2 are not;
    a label changed near the decision boundary (within 4x the probe's logit change) is answered in fp32."""
    import torch

    from scilm.bench.serve import save_random_classifier
    from scilm.inference import precision as precision_module
    from scilm.inference import predict as predict_module

    save_random_classifier(tmp_path / "clf", preset="esm2-tiny")
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQR\n" for i in range(200)))
    flips = {"fp32": 0, "bf16": 1, "bf16-weights": 2, "int8": 0, "int8-fbgemm": 2}
    near = {"int8-fbgemm"}  # its flips sit 0.01 from the boundary; the others' 0.5

    def fake(model, tokenizer, sequences, policy, batch_size=32, control=None):
        mode = getattr(model, "scilm_inference_mode", "fp32")
        logits = torch.tensor([[2.0, 0.0]] * len(sequences))
        logits[: flips[mode]] = torch.tensor([0.49, 0.51] if mode in near else [0.0, 1.0])
        return logits

    monkeypatch.setattr(predict_module, "policy_logits", fake)
    monkeypatch.setattr(precision_module, "probe_logit_change", lambda *a: 0.01)  # margin 0.04
    monkeypatch.setattr(precision_module, "fbgemm_available", lambda: True)
    rows = {r["mode"]: r for r in B.label_agreement(tmp_path / "clf", fasta)}
    assert rows["bf16"]["labels_identical_percent"] == rows["bf16"]["answered_identical_percent"] == 99.5
    assert rows["bf16"]["meets_guard"] and rows["bf16"]["recomputed_percent"] == 0
    assert rows["bf16-weights"]["answered_identical_percent"] == 99.0 and not rows["bf16-weights"]["meets_guard"]
    fbgemm = rows["int8-fbgemm"]
    assert fbgemm["labels_identical_percent"] == 99.0 and fbgemm["answered_identical_percent"] == 100.0
    assert fbgemm["recomputed_percent"] == 1.0 and fbgemm["meets_guard"] and fbgemm["fallback_delta"] == 0.01
    moved = float((torch.tensor([0.0, 1.0]).softmax(0) - torch.tensor([2.0, 0.0]).softmax(0)).abs().max())
    assert rows["bf16"]["max_probability_change"] == pytest.approx(moved) and rows["bf16"]["n_proteins"] == 200
    table = B.agreement_table(list(rows.values()), "clf")
    assert f"| bf16 | 99.50 | 99.50 | 0.0 | {moved:.4f} | yes |" in table
    assert "| bf16-weights | 99.00 | 99.00 | 0.0 |" in table and "| int8-fbgemm | 99.00 | 100.00 | 1.0 |" in table
