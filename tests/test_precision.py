"""Issue 16: inference precision chosen by a timed, guarded probe, cached per machine and model shape.

The timer is replaced by a fixed table per mode (deterministic choice); the quality guard runs for
real on a tiny ESM-2, and a mode whose embeddings drift is rejected however fast it is.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging

import numpy as np
import pytest
import torch
from transformers import EsmModel

from conftest import DEEPLOC_VALID
from scilm.data.protein import read_proteins
from scilm.errors import ScilmError
from scilm.inference import embed_proteins
from scilm.inference import precision as P
from scilm.models.protein import esm2_config, esm2_tokenizer


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv("SCILM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "PROBE_TOKENS", 128)  # a short probe (4 x 32 residues): the choice logic is tested


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread is faster than two fighting other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    return [r.sequence[:40] for r in read_proteins(DEEPLOC_VALID, task="membrane")[:8]]


def tiny():
    torch.manual_seed(0)
    return EsmModel(esm2_config("esm2-tiny"), add_pooling_layer=False).eval(), esm2_tokenizer()


def fixed_timer(monkeypatch, table: dict[str, float]) -> list[str]:
    timed: list[str] = []

    def fake(mode, run, repeats):
        timed.append(mode)
        return table[mode]

    monkeypatch.setattr(P, "_time_forward", fake)
    monkeypatch.setattr(P, "ABANDON_FACTOR", float("inf"))  # every mode timed by the table
    return timed


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("fastest", ["fp32", "bf16", "bf16-weights"])
def test_auto_picks_the_fastest_mode_that_meets_the_guard(monkeypatch, proteins, fastest):
    table = {"fp32": 1.0, "bf16": 0.8, "bf16-weights": 0.9}
    table[fastest] = 0.1
    fixed_timer(monkeypatch, table)
    model, tokenizer = tiny()
    reference = embed_proteins(copy.deepcopy(model), tokenizer, proteins, batch_size=4)
    prepared, plan = P.prepare_for_inference(model, tokenizer, proteins, precision="auto")
    assert plan.mode == fastest and plan.seconds == table
    assert all(plan.cosine[m] >= P.GUARD_COSINE for m in ("bf16", "bf16-weights"))
    out = embed_proteins(prepared, tokenizer, proteins, batch_size=4)
    assert out.dtype == np.float32
    assert cosines(out, reference).min() >= P.GUARD_COSINE
    if fastest == "fp32":
        np.testing.assert_array_equal(out, reference)


def test_guard_rejects_a_fast_mode_whose_embeddings_drift(monkeypatch, proteins):
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 0.1, "bf16-weights": 0.5})
    real_variant = P.variant

    def drifting(model, mode):
        runner, context = real_variant(model, mode)
        if mode == "bf16":  # a broken fast path: perturbed weights
            runner = copy.deepcopy(model)
            with torch.no_grad():
                for p in runner.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
        return runner, context

    monkeypatch.setattr(P, "variant", drifting)
    model, tokenizer = tiny()
    _, plan = P.prepare_for_inference(model, tokenizer, proteins, precision="auto")
    assert plan.cosine["bf16"] < P.GUARD_COSINE and plan.seconds["bf16"] is None
    assert plan.mode == "bf16-weights"
    assert any("bf16: fails the quality guard" in n for n in plan.notes)


def test_an_explicit_mode_that_fails_the_guard_falls_back_to_fp32(monkeypatch, proteins):
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16-weights": 0.1})
    monkeypatch.setattr(P, "GUARD_COSINE", 1.01)  # nothing but fp32 itself can meet it
    model, tokenizer = tiny()
    reference = embed_proteins(copy.deepcopy(model), tokenizer, proteins, batch_size=4)
    prepared, plan = P.prepare_for_inference(model, tokenizer, proteins, precision="bf16-weights")
    assert plan.mode == "fp32" and next(prepared.parameters()).dtype == torch.float32
    np.testing.assert_array_equal(embed_proteins(prepared, tokenizer, proteins, batch_size=4), reference)


def test_cache_miss_then_hit_then_corrupt(monkeypatch, proteins, caplog, tmp_path):
    timed = fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 0.5, "bf16-weights": 0.7})
    model, tokenizer = tiny()
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, precision="auto")
    assert not plan.cached and timed == ["fp32", "bf16", "bf16-weights"] * P.PROBE_REPEATS  # round-robin
    files = list((tmp_path / "cache" / "precision").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["seconds"] == {"fp32": 1.0, "bf16": 0.5, "bf16-weights": 0.7}
    assert stored["key"]["model"]["hidden_size"] == 128 and stored["key"]["torch"] == torch.__version__

    timed.clear()  # hit: nothing timed, the guard still checked on these weights
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, precision="auto")
    assert plan.cached and timed == [] and plan.mode == "bf16" and plan.cosine["bf16"] >= P.GUARD_COSINE

    good = {"fp32": 1.0, "bf16": 0.5, "bf16-weights": 0.7}
    for bad in ("{not json", json.dumps({"key": stored["key"], "seconds": {**good, "fp32": -1}, "build": {}}),
                json.dumps({"key": stored["key"], "seconds": good, "build": {"bf16-weights": "slow"}}),
                json.dumps({"key": stored["key"], "seconds": good})):  # no build seconds
        files[0].write_text(bad)
        timed.clear()
        with caplog.at_level(logging.WARNING, logger="scilm.inference.precision"):
            _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, precision="auto")
        assert not plan.cached and timed == ["fp32", "bf16", "bf16-weights"] * P.PROBE_REPEATS
        assert "ignoring the precision cache file" in caplog.text
        assert json.loads(files[0].read_text())["seconds"]["fp32"] == 1.0  # re-probed and rewritten whole
        caplog.clear()


def test_cache_key_names_machine_model_and_torch(monkeypatch, proteins):
    model, _ = tiny()
    key = P.probe_key(model, torch.device("cpu"), 4, 130, ["fp32", "bf16"])
    assert key["machine"]["cores"] and "cpu" in key["machine"] and key["torch"] == torch.__version__
    bigger = copy.copy(model)
    bigger.config = esm2_config("esm2-8m")
    other = P.probe_key(bigger, torch.device("cpu"), 4, 130, ["fp32", "bf16"])
    assert P._cache_path(key) != P._cache_path(other)


def test_fp32_is_untouched_and_bad_settings_are_errors(proteins):
    model, tokenizer = tiny()
    prepared, plan = P.prepare_for_inference(model, tokenizer, proteins, precision="fp32")
    assert prepared is model and plan.mode == "fp32" and plan.seconds == {}
    with pytest.raises(ScilmError, match="precision must be one of"):
        P.prepare_for_inference(model, tokenizer, proteins, precision="fp16")
    with pytest.raises(ScilmError, match="quantize must be one of"):
        P.prepare_for_inference(model, tokenizer, proteins, quantize="int4")


def test_probe_batch_is_representative(monkeypatch):
    """The probe runs at the input's median length (rounded down to one of PROBE_LENGTHS, so rankings are
    reused across inputs), PROBE_TOKENS residues a pass: int8's gain measured at 128 residues overstated
    it for a job of 512-residue proteins (1.36x vs 1.10x at the 35M shape)."""
    monkeypatch.setattr(P, "PROBE_TOKENS", 512)
    seqs = ["A" * n for n in (10, 500, 30, 40, 20, 60)]
    assert P.probe_shape(seqs) == (16, 32)  # median 40 -> 32 residues, 16 of them
    assert [len(s) for s in P.probe_sequences(seqs)] == [10, 20, 30, 32, 32, 32]  # fewer proteins than 16
    assert [len(s) for s in P.probe_sequences(seqs, batch=2, residues=128)] == [40, 60]  # from the median up
    assert [len(s) for s in P.probe_sequences(seqs[:1], batch=4)] == [10]
    long = ["A" * n for n in range(300, 1100, 50)]  # 16 proteins, median 700
    assert P.probe_shape(long) == (1, 512) and [len(s) for s in P.probe_sequences(long)] == [512]
    assert P.probe_shape(["A" * 1022] * 3) == (1, 512) and P.probe_shape(["A" * 1024] * 3) == (0 + 1, 1024)
    assert P.probe_shape(["A" * 300] * 9) == (2, 256) and P.probe_shape(["A" * 20] * 9) == (25, 20)
    with pytest.raises(ScilmError, match="no sequences"):
        P.probe_shape([])


def test_a_short_job_does_not_pay_for_a_quantised_copy(monkeypatch, proteins):
    """With the job's size known and a cached ranking, int8 is weighed with its build seconds before it is
    built: 2x faster a pass but 50 s to quantise loses on 1,000 residues (never built) and wins on
    1,000,000 (built once: the guarded copy is the one used). On a cache miss every mode is built for
    the probe, so the build is paid and only the job's time counts."""
    import time

    if not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    pytest.importorskip("torchao")
    offset = [0.0]
    monkeypatch.setattr(P, "_clock", lambda: time.perf_counter() + offset[0])
    builds = []
    real = P.fbgemm_int8_variant

    def slow_build(model):
        builds.append(1)
        offset[0] += 50.0
        return real(model)

    monkeypatch.setattr(P, "fbgemm_int8_variant", slow_build)
    monkeypatch.setattr(P, "guard", lambda reference, result: (1.0, True))
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 2.0, "bf16-weights": 2.0, "int8": 3.0, "int8-fbgemm": 0.5})
    model, tokenizer = tiny()

    def run(precision, job):
        builds.clear()
        prepared, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, precision, "int8",
                                                 job_residues=job)
        assert plan.job_residues == job and plan.probe_shape == (4, 32)
        assert getattr(prepared, "scilm_inference_mode", "fp32") == plan.mode
        return plan

    for precision in ("fp32", "auto"):  # both cache their ranking (neither owes fp32 a guard)
        plan = run(precision, 1000)  # miss: everything built for the probe, so int8-fbgemm's build is paid
        assert not plan.cached and plan.mode == "int8-fbgemm" and builds == [1]
        assert 50.0 <= plan.build_seconds["int8-fbgemm"] < 60.0 and plan.build_seconds["fp32"] == 0.0
        stored = [json.loads(f.read_text()) for f in (P.cache_dir() / "precision").glob("*.json")]
        assert all(50.0 <= c["build"]["int8-fbgemm"] < 60.0 for c in stored)
        plan = run(precision, 1000)  # hit: 7.8 s of fp32 against 50 + 3.9 s: not built at all
        assert plan.cached and plan.mode == "fp32" and builds == []
        assert any("estimated for the 1,000 residues of this job" in n for n in plan.notes)
        plan = run(precision, 1_000_000)  # hit: 7,812 s against 50 + 3,906 s
        assert plan.cached and plan.mode == "int8-fbgemm" and builds == [1]
        plan = run(precision, None)  # per pass, as the server decides
        assert plan.cached and plan.mode == "int8-fbgemm" and builds == [1]


def test_a_cached_int8_mode_within_the_margin_is_not_built(monkeypatch, proteins):
    """On a cache hit modes are built for the guard in order of cost, an int8 mode's cost counted with
    its INT8_MIN_GAIN margin: 1.05x faster than fp32 would be refused after its build, so it is not built."""
    pytest.importorskip("torchao")
    monkeypatch.setattr(P, "fbgemm_available", lambda: False)
    monkeypatch.setattr(P, "guard", lambda reference, result: (1.0, True))
    fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 1 / 1.05})
    model, tokenizer = tiny()
    P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, "fp32", "int8")
    built = []
    real = P.variant
    monkeypatch.setattr(P, "variant", lambda m, mode: built.append(mode) or real(m, mode))
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, "fp32", "int8")
    assert plan.cached and plan.mode == "fp32" and built == []


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import EsmForSequenceClassification

    torch.manual_seed(0)
    config = esm2_config("esm2-tiny", num_labels=2, id2label={0: "membrane", 1: "soluble"},
                         label2id={"membrane": 0, "soluble": 1})
    path = tmp_path_factory.mktemp("clf") / "model"
    EsmForSequenceClassification(config).save_pretrained(path)
    esm2_tokenizer().save_pretrained(path)
    return path


def test_cli_embed_and_predict_take_precision(run_cli, monkeypatch, tmp_path, tiny_fastas, classifier_dir):
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 0.5, "bf16-weights": 0.7})
    fp32, auto = tmp_path / "fp32.npy", tmp_path / "auto.npy"
    common = ["embed", "--model", classifier_dir, "--data", tiny_fastas[1], "--truncate", "40"]
    assert run_cli(*common, "--out", fp32).exit_code == 0
    result = run_cli(*common, "--out", auto, "--precision", "auto")
    assert result.exit_code == 0, result.stderr
    assert "precision bf16" in result.stderr
    assert cosines(np.load(auto), np.load(fp32)).min() >= P.GUARD_COSINE
    predict = ["predict", "--model", classifier_dir, "--data", tiny_fastas[1], "--truncate", "40"]
    assert run_cli(*predict, "--out", tmp_path / "fp32.csv").exit_code == 0
    result = run_cli(*predict, "--out", tmp_path / "auto.csv", "--precision", "bf16-weights")
    assert result.exit_code == 0 and "precision bf16-weights" in result.stderr
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "fp32.csv"), pd.read_csv(tmp_path / "auto.csv")
    assert (a["predicted_label"] == b["predicted_label"]).all()
    np.testing.assert_allclose(a["prob_membrane"], b["prob_membrane"], atol=0.02)
    bad = run_cli(*common, "--out", tmp_path / "x.npy", "--precision", "fp16")
    assert bad.exit_code == 2 and "--precision must be one of" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(*common, "--out", tmp_path / "x.npy", "--quantize", "int4")
    assert bad.exit_code == 2 and "--quantize must be one of" in bad.stderr


def test_cli_tells_the_probe_the_size_of_the_job(run_cli, monkeypatch, tmp_path, tiny_fastas, classifier_dir):
    """embed and predict pass the residues they will feed (every record, cut by the policy; windows
    counted whole) so a short job is not handed a copy that costs more to build than it saves."""
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 0.5, "bf16-weights": 0.7})
    seen = []
    real = P.prepare_for_inference
    monkeypatch.setattr(P, "prepare_for_inference",
                        lambda *a, **k: seen.append(k.get("job_residues")) or real(*a, **k))
    lengths = [len(r.sequence) for r in read_proteins(tiny_fastas[1], task=None, label_column=None)]
    common = ["--model", classifier_dir, "--data", tiny_fastas[1], "--truncate", "40", "--precision", "auto"]
    assert run_cli("embed", *common, "--out", tmp_path / "a.npy").exit_code == 0
    assert run_cli("predict", *common, "--out", tmp_path / "a.csv").exit_code == 0
    assert run_cli("embed", *common, "--out", tmp_path / "w.npy", "--long-policy", "window").exit_code == 0
    windows = sum(n if n <= 40 else 40 * (1 + -(-(n - 40) // 20)) for n in lengths)  # stride 20, last window at the end
    assert seen == [sum(min(n, 40) for n in lengths)] * 2 + [windows] and max(lengths) > 80


def test_int8_is_kept_only_when_faster_and_within_the_guard(monkeypatch, proteins):
    pytest.importorskip("torchao")
    model, tokenizer = tiny()
    reference = embed_proteins(copy.deepcopy(model), tokenizer, proteins, batch_size=4)
    fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 0.2, "int8-fbgemm": 0.5})
    prepared, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, quantize="int8")
    if plan.cosine["int8"] >= P.GUARD_COSINE:
        assert plan.mode == "int8"
        assert cosines(embed_proteins(prepared, tokenizer, proteins, batch_size=4), reference).min() >= 0.998
    else:  # refused: fp32 with a note, the fp32 answer exactly
        assert plan.mode == "fp32" and any("int8: fails the quality guard" in n for n in plan.notes)
        np.testing.assert_array_equal(embed_proteins(prepared, tokenizer, proteins, batch_size=4), reference)
    fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 3.0, "int8-fbgemm": 2.0})  # slower: refused whatever its guard
    monkeypatch.setenv("SCILM_CACHE_DIR", str(P.cache_dir()) + "-slower")  # not the first call's cached ranking
    prepared, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, quantize="int8")
    assert plan.mode == "fp32" and any("int8" in n for n in plan.notes)
    np.testing.assert_array_equal(embed_proteins(prepared, tokenizer, proteins, batch_size=4), reference)


def test_the_faster_int8_kernel_that_meets_the_guard_is_kept(monkeypatch, proteins):
    """FBGEMM's int8 Linear (per-channel weight scales) is probed beside torchao's; the faster one that
    meets the guard wins, and its embeddings are those of ``apply_mode`` with it (same kernel, same numbers)."""
    pytest.importorskip("torchao")
    if not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    model, tokenizer = tiny()
    reference = embed_proteins(copy.deepcopy(model), tokenizer, proteins, batch_size=4)
    timed = fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 0.9, "int8-fbgemm": 0.4})
    prepared, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, quantize="int8")
    assert set(timed) >= {"fp32", "int8-fbgemm"}
    if plan.cosine["int8-fbgemm"] < P.GUARD_COSINE:
        assert plan.mode != "int8-fbgemm" and any("int8-fbgemm: fails the quality guard" in n for n in plan.notes)
        return
    assert plan.mode == "int8-fbgemm" and prepared.scilm_inference_mode == "int8-fbgemm"
    got = embed_proteins(prepared, tokenizer, proteins, batch_size=4)
    again = embed_proteins(P.apply_mode(copy.deepcopy(model), "int8-fbgemm"), tokenizer, proteins, batch_size=4)
    np.testing.assert_array_equal(got, again)
    assert cosines(got, reference).min() >= 0.998  # the probe's guard held on other proteins too
    assert not np.array_equal(got, reference)  # it really ran int8
    # the quantised Linear layers are FBGEMM's dynamic int8 ones, and the model asked for was not changed
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in prepared.modules())
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_a_hopeless_mode_is_dropped_after_one_short_pass(monkeypatch, proteins):
    """A mode many times slower than fp32 (bf16 on a CPU without bf16 units) costs one short canary pass,
    not a full probe pass; the choice and the answer stay fp32's."""
    import time

    model, tokenizer = tiny()
    calls = []
    offset = [0.0]  # the slow mode costs 100 s of probe clock per call: no real sleep, no race with load
    monkeypatch.setattr(P, "_clock", lambda: time.perf_counter() + offset[0])

    class Slow(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kwargs):
            calls.append(kwargs["input_ids"].shape)
            offset[0] += 100.0
            return self.inner(**kwargs)

    real_variant = P.variant
    monkeypatch.setattr(P, "variant", lambda m, mode: (Slow(m), contextlib.nullcontext) if mode == "bf16"
                        else real_variant(m, mode))
    reference = embed_proteins(copy.deepcopy(model), tokenizer, proteins, batch_size=4)
    prepared, plan = P.prepare_for_inference(model, tokenizer, proteins, "auto", use_cache=False)
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1] <= P.CANARY_RESIDUES + 2  # the canary only
    assert plan.seconds["bf16"] is None and "bf16" not in plan.cosine
    assert any(n.startswith("bf16: ") and "slower than fp32 on a short pass" in n for n in plan.notes)
    assert plan.mode != "bf16"
    if plan.mode == "fp32":
        np.testing.assert_array_equal(embed_proteins(prepared, tokenizer, proteins, batch_size=4), reference)


def test_int8_without_torchao_is_one_line(monkeypatch, proteins):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)  # import fails as if not installed
    model, tokenizer = tiny()
    with pytest.raises(ScilmError, match=r"scilm\[fast\]"):
        P.prepare_for_inference(model, tokenizer, proteins, quantize="int8")


def test_packed_rows_are_not_yet_correct_for_esm_so_scilm_pads_sorted_batches():
    """Canary: transformers' ESM on CPU lets packed sequences attend to each other (the bidirectional
    mask ignores position_ids), so packing stays off; when this fails, packing can be enabled."""
    model, tokenizer = tiny()
    a, b = "MKTAYIAKQRQISFVKSHFSRQ", "MSEQNNTEMTFQIQR"
    ia, ib = tokenizer([a])["input_ids"][0], tokenizer([b])["input_ids"][0]
    ids = torch.tensor([ia + ib])
    positions = torch.tensor([list(range(len(ia))) + list(range(len(ib)))])
    with torch.no_grad():
        alone = model(**tokenizer([a], return_tensors="pt")).last_hidden_state[0]
        packed = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).last_hidden_state[0]
    assert (packed[: len(ia)] - alone).abs().max() > 1e-3


def test_embed_resume_fingerprint_tells_modes_apart():
    """A resumed embed never mixes chunks of two modes: bf16 autocast keeps the weights, so the
    fingerprint carries the mode."""
    from scilm.inference.embed_stream import model_fingerprint

    model, tokenizer = tiny()
    fp32 = model_fingerprint(model, tokenizer)
    assert model_fingerprint(copy.deepcopy(model), tokenizer) == fp32
    assert model_fingerprint(P.apply_mode(copy.deepcopy(model), "bf16"), tokenizer) != fp32
    assert model_fingerprint(P.apply_mode(copy.deepcopy(model), "bf16-weights"), tokenizer) != fp32


def test_the_guard_compares_what_predict_reports_for_regression_and_multilabel_models():
    """A mode that keeps the top label but moves a regression value or a thresholded label set fails."""
    from types import SimpleNamespace

    from scilm.inference import precision

    pooled = torch.ones(2, 4)
    regression = SimpleNamespace(config=SimpleNamespace(problem_type="regression", num_labels=1))
    values = torch.tensor([[0.50], [1.00]])
    reference = (pooled, precision._answers(regression, values))
    assert precision.guard(reference, (pooled, precision._answers(regression, values + 0.005)))[1]
    assert not precision.guard(reference, (pooled, precision._answers(regression, values + 0.05)))[1]

    config = SimpleNamespace(problem_type="multi_label_classification", num_labels=2,
                             id2label={0: "a", 1: "b"}, scilm_thresholds={"a": 0.5, "b": 0.7})
    multi = SimpleNamespace(config=config)
    logits = torch.tensor([[2.0, 0.80], [-1.0, 0.9]])  # b: sigmoid 0.69 (out), 0.711 (in)
    moved = torch.tensor([[2.0, 0.90], [-1.0, 0.9]])  # the same top label, b now crosses its threshold
    reference = (pooled, precision._answers(multi, logits))
    assert precision.guard(reference, (pooled, precision._answers(multi, logits)))[1]
    assert not precision.guard(reference, (pooled, precision._answers(multi, moved)))[1]
    assert moved.argmax(-1).tolist() == logits.argmax(-1).tolist()


def test_int8_within_the_margin_of_the_precision_mode_is_not_kept(monkeypatch, proteins):
    """int8 changes the numbers: 1.05x faster (timing noise) keeps fp32; 1.25x faster takes int8."""
    pytest.importorskip("torchao")
    model, tokenizer = tiny()
    monkeypatch.setattr(P, "fbgemm_available", lambda: False)  # one int8 kernel: the margin alone decides
    monkeypatch.setattr(P, "guard", lambda reference, result: (1.0, True))  # the margin, not the guard, is tested
    fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 1 / 1.05})
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, quantize="int8")
    assert plan.mode == "fp32" and any("int8 is not 1.1x faster than fp32" in n for n in plan.notes)
    fixed_timer(monkeypatch, {"fp32": 1.0, "int8": 0.8})
    monkeypatch.setenv("SCILM_CACHE_DIR", str(P.cache_dir()) + "-2")
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, quantize="int8")
    assert plan.mode == "int8"


def test_a_classifier_is_timed_as_predict_runs_it(monkeypatch, proteins):
    """The timed passes of a sequence classifier run its last layer at <cls> only in the modes where
    predict does (fp32), and the full layer where predict cannot (int8): each mode timed at its real cost."""
    from transformers import EsmForSequenceClassification

    from scilm.models.cls_only import ClsOnlyEsmLayer

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    calls, current = [], {}
    forward = ClsOnlyEsmLayer.forward
    monkeypatch.setattr(ClsOnlyEsmLayer, "forward",  # recorded during timed passes only (the guard's are not)
                        lambda self, *a, **k: (current.get("mode") and calls.append(current["mode"]))
                        or forward(self, *a, **k))

    def run_once(mode, run, repeats):
        current["mode"] = mode
        run()
        current["mode"] = None
        return {"fp32": 1.0, "int8": 3.0, "int8-fbgemm": 2.0}[mode]

    monkeypatch.setattr(P, "_time_forward", run_once)
    monkeypatch.setattr(P, "ABANDON_FACTOR", float("inf"))
    if not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    pytest.importorskip("torchao")
    monkeypatch.setattr(P, "guard", lambda reference, result: (1.0, True))  # every mode reaches its timed pass
    _, plan = P.prepare_for_inference(model, esm2_tokenizer(), proteins, quantize="int8")
    assert calls == ["fp32"] * P.PROBE_REPEATS  # fp32's timed passes used it; neither int8 kernel's could
    assert plan.mode == "fp32"


def test_the_guard_judges_the_labels_predict_reports(monkeypatch, proteins):
    """A classifier's guard answers come from the forward predict runs (last layer at <cls> only)."""
    from transformers import EsmForSequenceClassification

    from scilm.models.cls_only import ClsOnlyEsmLayer

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    encoded = esm2_tokenizer()(proteins[:3], padding=True, return_tensors="pt")
    used = []
    forward = ClsOnlyEsmLayer.forward
    monkeypatch.setattr(ClsOnlyEsmLayer, "forward", lambda self, *a, **k: used.append(1) or forward(self, *a, **k))
    pooled, answers, logits = P._forward(model, contextlib.nullcontext, encoded)
    assert used and answers.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(**encoded).logits, rtol=0, atol=1e-6)
        assert torch.equal(answers, logits.argmax(-1))
        hidden = model.esm(**encoded).last_hidden_state  # the embeddings: the full layer's (B, T, H)
    assert pooled.shape == (3, hidden.shape[-1])


def test_a_burst_of_load_does_not_pick_the_mode(monkeypatch, proteins):
    """Modes are timed round-robin: a burst as long as two timed passes (another job on a shared machine)
    slows one pass of each mode, so fp32 (1.0 s) still beats bf16 (1.2 s). Timed one mode after another,
    both of fp32's passes fell in the burst and bf16 won."""
    model, tokenizer = tiny()
    table, calls = {"fp32": 1.0, "bf16": 1.2}, []

    def bursty(mode, run, repeats):
        calls.append(mode)
        return table[mode] * (3.0 if len(calls) <= 2 else 1.0)

    monkeypatch.setattr(P, "_time_forward", bursty)
    monkeypatch.setattr(P, "ABANDON_FACTOR", float("inf"))
    monkeypatch.setattr(P, "bf16_usable", lambda device: True)
    monkeypatch.setattr(P, "MODES", ("fp32", "bf16"))
    monkeypatch.setattr(P, "guard", lambda reference, result: (1.0, True))
    _, plan = P.prepare_for_inference(copy.deepcopy(model), tokenizer, proteins, precision="auto")
    assert calls == ["fp32", "bf16"] * P.PROBE_REPEATS
    assert plan.mode == "fp32" and plan.seconds == {"fp32": 1.0, "bf16": 1.2}


@pytest.mark.parametrize("mode", P.INT8_MODES)
def test_int8_answers_do_not_depend_on_batch_mates(mode, proteins):
    """Dynamic int8 scales a Linear layer's input per tensor: in a padded batch a protein's embedding
    moved with its batch-mates and padding (0.7 % on the demo model, batch 16 vs 1). Run one protein at a
    time, the outputs are bitwise the same whatever the batch size or order, and each row is what the
    protein alone gives (padded positions zero)."""
    from transformers import EsmForSequenceClassification, EsmForTokenClassification

    if mode == "int8":
        pytest.importorskip("torchao")
    elif not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    model, tokenizer = tiny()
    quantized = P.apply_mode(copy.deepcopy(model), mode)
    varied = [p[: 12 + 4 * i] for i, p in enumerate(proteins)]  # 12..40 residues: padded batches
    eight = embed_proteins(quantized, tokenizer, varied, batch_size=8)
    np.testing.assert_array_equal(eight, embed_proteins(quantized, tokenizer, varied, batch_size=1))
    np.testing.assert_array_equal(eight, embed_proteins(quantized, tokenizer, varied[::-1], batch_size=3)[::-1])
    assert not np.array_equal(eight, embed_proteins(model, tokenizer, varied, batch_size=8))  # int8 ran
    torch.manual_seed(0)
    classifier = P.apply_mode(EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3)).eval(), mode)
    with torch.no_grad():  # the same protein among other batch-mates and other padding
        one = classifier(**tokenizer(varied[:3], padding=True, return_tensors="pt")).logits
        other = classifier(**tokenizer([varied[2], varied[7], varied[0]], padding=True, return_tensors="pt")).logits
    assert torch.equal(one[0], other[2]) and torch.equal(one[2], other[0])
    mixed = [proteins[0][:12], proteins[1], proteins[2][:25]]
    encoded = tokenizer(mixed, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    for net in (quantized, P.apply_mode(EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3)).eval(), mode),
                P.apply_mode(EsmForTokenClassification(esm2_config("esm2-tiny", num_labels=3)).eval(), mode)):
        with torch.no_grad():
            batch = net(**encoded, output_hidden_states=True)
            for i, n in enumerate(encoded["attention_mask"].sum(1).tolist()):
                alone = net(input_ids=encoded["input_ids"][i:i + 1, :n], output_hidden_states=True)
                for key in [k for k in ("last_hidden_state", "logits") if k in alone]:
                    got, want = batch[key][i], alone[key][0]
                    if want.dim() == 2:  # per position: (n, H) then zeros
                        assert torch.equal(got[:n], want) and not got[n:].any()
                    else:  # per protein
                        assert torch.equal(got, want)
                for got, want in zip(batch.hidden_states, alone.hidden_states, strict=True):
                    assert torch.equal(got[i, :n], want[0]) and not got[i, n:].any()


@pytest.mark.parametrize("mode", ["bf16", "int8-fbgemm"])
def test_a_copy_of_a_wrapped_model_runs_its_own_weights(mode, proteins):
    """bf16 autocast and the one-protein int8 pass wrap ``forward``; a deepcopy's forward must use the
    copy (a closure would still run the original's weights)."""
    if mode == "int8-fbgemm" and not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    model, tokenizer = tiny()
    wrapped = P.apply_mode(copy.deepcopy(model), mode)
    twin = copy.deepcopy(wrapped)
    before = embed_proteins(twin, tokenizer, proteins[:2], batch_size=2)
    with torch.no_grad():
        for p in wrapped.parameters():  # int8: the LayerNorms and embeddings (the Linear weights are packed)
            p.zero_()
    np.testing.assert_array_equal(embed_proteins(twin, tokenizer, proteins[:2], batch_size=2), before)
    assert not np.array_equal(embed_proteins(wrapped, tokenizer, proteins[:2], batch_size=2), before)


def test_the_one_protein_pass_refuses_what_it_cannot_split(proteins):
    """Left padding, embeddings instead of ids and tuple outputs are refused in one line; a (B, T)
    keyword such as position_ids is cut per protein like the ids."""
    model, tokenizer = tiny()
    wrapped = P.one_protein_at_a_time(copy.deepcopy(model))
    encoded = tokenizer([proteins[0][:10], proteins[1][:20]], padding=True, return_tensors="pt")
    with torch.no_grad():
        positions = torch.arange(encoded["input_ids"].shape[1]).expand_as(encoded["input_ids"]) * 3
        got = wrapped(**encoded, position_ids=positions).last_hidden_state
        for i, n in enumerate(encoded["attention_mask"].sum(1).tolist()):
            alone = model(input_ids=encoded["input_ids"][i:i + 1, :n], position_ids=positions[i:i + 1, :n])
            assert torch.equal(got[i, :n], alone.last_hidden_state[0])
        with pytest.raises(ScilmError, match="right-padded"):
            wrapped(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"].flip(1))
        with pytest.raises(ScilmError, match="input_ids"):
            wrapped(inputs_embeds=torch.zeros(1, 4, 128))
        with pytest.raises(ScilmError, match="return_dict"):
            wrapped(**encoded, return_dict=False)


# ------------------------------------------------------------------ fp32 answers near a decision boundary


def test_decision_margin_is_the_smallest_logit_move_that_changes_an_answer():
    from types import SimpleNamespace

    single = SimpleNamespace(problem_type="single_label_classification", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 0.4, -1.0]])
    assert P.decision_margin(single, logits).tolist() == pytest.approx([1.0, 0.05])  # half the top-2 gap
    per_residue = torch.stack([logits, logits.flip(0)])  # (2, T=2, 3)
    torch.testing.assert_close(P.decision_margin(single, per_residue), torch.tensor([[1.0, 0.05], [0.05, 1.0]]))
    multi = SimpleNamespace(problem_type="multi_label_classification", num_labels=2, id2label={0: "a", 1: "b"},
                            scilm_thresholds={"a": 0.5, "b": 0.8})  # threshold logits 0 and log(4)
    assert P.decision_margin(multi, torch.tensor([[0.1, 2.0], [-3.0, 1.3]])).tolist() == pytest.approx(
        [0.1, abs(1.3 - np.log(4.0))], rel=1e-5)
    regression = SimpleNamespace(problem_type="regression", num_labels=1, id2label={0: "y"})
    assert P.decision_margin(regression, torch.zeros(2, 1)) is None
    one_class = SimpleNamespace(problem_type=None, num_labels=1, id2label={0: "a"})
    assert torch.isinf(P.decision_margin(one_class, torch.zeros(2, 1))).all()
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])  # <cls> r r <eos> pad / <cls> r <eos> pad pad
    assert P.residue_positions(mask).tolist() == [[False, True, True, False, False], [False, True, False, False, False]]


def shifted(model, shift: float):
    """A stand-in for a reduced precision: ``model``'s weights, its class-1 logit moved by ``shift``."""
    def run(forward, *args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits[..., 1] += shift
        return output

    return P.wrap_forward(copy.copy(model), run)


def test_answers_near_a_boundary_are_recomputed_in_fp32_and_only_those(monkeypatch, proteins):
    """A mode moving class 1's logit by 0.02 flips exactly the proteins whose fp32 gap is under 0.02; with
    the fallback (delta 0.02 measured on the probe, margin 4x: 0.08) every label is fp32's, and only proteins
    within the margin were run again, in fp32 (their logits are fp32's; the others keep the mode's), whatever
    the order and batches."""
    monkeypatch.setattr(P, "FALLBACK_SAFETY", 4.0)  # this test's gaps are spread for a 4x margin
    from transformers import EsmForSequenceClassification

    from scilm.inference.policy import head_policy
    from scilm.inference.predict import policy_logits

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    tokenizer, policy = esm2_tokenizer(), head_policy(40)
    fp32 = policy_logits(model, tokenizer, proteins, policy)
    gap = fp32[:, 0] - fp32[:, 1]
    with torch.no_grad():  # centre the gaps on 0: some proteins within 0.02 of the boundary, some far
        model.classifier.out_proj.bias[1] += float(gap.median()) + 0.005
    fp32 = policy_logits(model, tokenizer, proteins, policy)
    gap = fp32[:, 0] - fp32[:, 1]
    mode = shifted(model, 0.02)
    bare = policy_logits(mode, tokenizer, proteins, policy)
    flipped = (bare.argmax(1) != fp32.argmax(1))
    assert flipped.any() and flipped.tolist() == ((gap > 0) & (gap < 0.02)).tolist()  # the test can fail
    delta = P.probe_logit_change(mode, model, tokenizer, proteins)
    assert delta == pytest.approx(0.02, abs=1e-5)
    P.with_fp32_fallback(mode, model, delta)
    answered = policy_logits(mode, tokenizer, proteins, policy)
    assert torch.equal(answered.argmax(1), fp32.argmax(1))
    near = (bare[:, 0] - bare[:, 1]).abs() / 2 <= 4 * delta
    assert mode.scilm_fp32_fallback.recomputed == int(near.sum()) > int(flipped.sum())
    torch.testing.assert_close(answered[near], fp32[near], rtol=0, atol=1e-5)  # fp32's, to batch rounding
    assert torch.equal(answered[~near], bare[~near])  # the mode's elsewhere
    reversed_order = policy_logits(mode, tokenizer, proteins[::-1], policy, batch_size=3).flip(0)
    torch.testing.assert_close(reversed_order, answered, rtol=0, atol=1e-5)  # what ran before never matters
    assert mode.scilm_fp32_fallback.delta == delta


def test_per_residue_answers_near_a_boundary_are_fp32s(proteins):
    """The same for a per-residue model: a protein with any residue near the boundary is rerun whole."""
    from transformers import EsmForTokenClassification

    from scilm.inference.residue import predict_residues

    torch.manual_seed(0)
    model = EsmForTokenClassification(esm2_config("esm2-tiny", num_labels=2, id2label={0: "H", 1: "C"})).eval()
    tokenizer = esm2_tokenizer()
    encoded = tokenizer(proteins, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
        gap = (logits[..., 0] - logits[..., 1])[P.residue_positions(encoded["attention_mask"])]
        model.classifier.bias[1] += float(gap.median())
    fp32 = predict_residues(model, tokenizer, proteins, policy=None, truncate=40)
    mode = shifted(model, 0.05)
    bare = predict_residues(mode, tokenizer, proteins, truncate=40)
    assert bare != fp32  # some residue flipped: the test can fail
    P.with_fp32_fallback(mode, model, P.probe_logit_change(mode, model, tokenizer, proteins))
    assert predict_residues(mode, tokenizer, proteins, truncate=40) == fp32
    assert 0 < mode.scilm_fp32_fallback.recomputed <= len(proteins)


@pytest.mark.parametrize("precision,quantize", [("bf16-weights", "none"), ("fp32", "int8")])
def test_prepared_classifier_answers_fp32_labels(monkeypatch, proteins, precision, quantize):
    """prepare_for_inference attaches the fallback to a classifier in a reduced mode, with the probe's
    largest logit change and the untouched fp32 model as reference, and predict's labels are fp32's."""
    from transformers import EsmForSequenceClassification

    from scilm.inference.predict import predict_proteins

    if quantize == "int8":
        pytest.importorskip("torchao")
    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16-weights": 0.5, "int8": 0.5, "int8-fbgemm": 0.4})
    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3)).eval()
    with torch.no_grad():  # two classes 0.5 apart, the third far: few answers near the boundary, so the mode is used
        model.classifier.out_proj.bias.copy_(torch.tensor([1.0, 0.5, -3.0]))
    tokenizer = esm2_tokenizer()
    expected = [max(r, key=r.get) for r in predict_proteins(model, tokenizer, proteins, truncate=40)]
    ready, plan = P.prepare_for_inference(model, tokenizer, proteins, precision, quantize)
    assert plan.mode != "fp32" and ready is not model
    fallback = ready.scilm_fp32_fallback
    assert fallback.reference is model and fallback.delta == plan.fallback_delta > 0
    assert next(model.parameters()).dtype == torch.float32 and not hasattr(model, "scilm_fp32_fallback")
    assert "recomputed in fp32" in plan.summary()
    assert [max(r, key=r.get) for r in predict_proteins(ready, tokenizer, proteins, truncate=40)] == expected
    encoder, _ = tiny()  # an encoder has no decision: nothing attached, nothing kept
    ready, plan = P.prepare_for_inference(encoder, tokenizer, proteins, precision, quantize)
    assert plan.fallback_delta is None and not hasattr(ready, "scilm_fp32_fallback")


def test_the_fp32_reruns_count_in_the_choice(monkeypatch, proteins):
    """A mode 2x faster per pass whose every probe answer sits on a decision boundary would rerun every
    protein in fp32 (0.5 + 1.0 s > fp32's 1.0 s): fp32 is chosen. With answers far from it, the mode is."""
    from transformers import EsmForSequenceClassification

    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 5.0, "bf16-weights": 0.5})
    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    with torch.no_grad():
        model.classifier.out_proj.bias.copy_(torch.tensor([4.0, 0.0]))  # class 0 by 4 logits: far
    _, plan = P.prepare_for_inference(copy.deepcopy(model), esm2_tokenizer(), proteins, precision="auto", use_cache=False)
    assert plan.mode == "bf16-weights" and plan.fallback_share == 0.0
    with torch.no_grad():
        model.classifier.out_proj.weight.zero_()
        model.classifier.out_proj.bias.zero_()  # every protein a tie: every answer on the boundary
    _, plan = P.prepare_for_inference(model, esm2_tokenizer(), proteins, precision="auto", use_cache=False)
    assert plan.mode == "fp32"


@pytest.mark.parametrize("mode", ["bf16", "bf16-weights", "int8-fbgemm"])
def test_apply_mode_leaves_the_fp32_model_as_it_was(mode, proteins):
    """The fp32 model stays the fallback's reference: a mode is a copy or a wrapper, never a change to it."""
    if mode == "int8-fbgemm" and not P.fbgemm_available():
        pytest.skip("no FBGEMM int8 kernels in this torch build")
    model, tokenizer = tiny()
    before = embed_proteins(model, tokenizer, proteins[:3], batch_size=3)
    moded = P.apply_mode(model, mode)
    assert moded is not model and "forward" not in vars(model) and not hasattr(model, "scilm_inference_mode")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    np.testing.assert_array_equal(embed_proteins(model, tokenizer, proteins[:3], batch_size=3), before)
    assert not np.array_equal(embed_proteins(moded, tokenizer, proteins[:3], batch_size=3), before)


def test_the_reruns_are_priced_on_more_proteins_than_the_probe(monkeypatch, proteins):
    """The probe batch (1-2 proteins on real inputs) may see no answer near a boundary while the input's
    first proteins do (the served random classifier: 0 % on the probe, 40 % on 4,096 residues). The share
    measured on those decides: 80 % reruns at fp32's 1.0 s make a 0.5 s mode cost 1.3 s, so fp32 is chosen,
    with a note; a named mode is the user's choice and is kept, its delta taken from the sample too."""
    from transformers import EsmForSequenceClassification

    fixed_timer(monkeypatch, {"fp32": 1.0, "bf16": 5.0, "bf16-weights": 0.5})
    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()
    with torch.no_grad():
        model.classifier.out_proj.bias.copy_(torch.tensor([4.0, 0.0]))  # the probe: far from the boundary
    sampled = []
    monkeypatch.setattr(P, "_sample_fallback", lambda runner, context, reference, tokenizer, sample, delta:
                        sampled.append(sample) or (delta * 2, 0.8))
    _, plan = P.prepare_for_inference(copy.deepcopy(model), esm2_tokenizer(), proteins, precision="auto", use_cache=False)
    assert plan.mode == "fp32" and sampled == [proteins]  # 8 x 40 residues: all within 4,096
    assert any("bf16-weights would rerun 80 % of these proteins in fp32" in note for note in plan.notes)
    sampled.clear()
    ready, plan = P.prepare_for_inference(copy.deepcopy(model), esm2_tokenizer(), proteins, precision="bf16-weights",
                                          use_cache=False)
    assert plan.mode == "bf16-weights" and len(sampled) == 1  # its delta still refined on the sample
    assert ready.scilm_fp32_fallback.delta == plan.fallback_delta and plan.fallback_share == 0.8
    assert P._share_sample(["A" * 3000, "C" * 1000, "D" * 97, "E"]) == ["A" * 3000, "C" * 1000]
    assert P._share_sample(["A" * 5000, "C"]) == ["A" * 5000]


def test_multilabel_sets_near_a_threshold_are_fp32s(proteins):
    """Multi-label: a label whose logit sits within the margin of its threshold's logit is recomputed, so
    every predicted label set is fp32's (the stand-in mode moves label 1's logit by 0.02)."""
    from transformers import EsmForSequenceClassification

    from scilm.inference.policy import head_policy
    from scilm.inference.predict import policy_logits

    torch.manual_seed(0)
    config = esm2_config("esm2-tiny", num_labels=2, problem_type="multi_label_classification",
                         scilm_thresholds={"LABEL_0": 0.5, "LABEL_1": 0.8})
    model = EsmForSequenceClassification(config).eval()
    tokenizer, policy = esm2_tokenizer(), head_policy(40)
    with torch.no_grad():  # centre label 1's logits on its threshold's logit, log(4)
        model.classifier.out_proj.bias[1] += float(np.log(4.0) - policy_logits(model, tokenizer, proteins, policy)[:, 1].median()) - 0.005
    cut = torch.tensor([0.0, float(np.log(4.0))])
    fp32 = policy_logits(model, tokenizer, proteins, policy) >= cut
    mode = shifted(model, 0.02)
    assert not torch.equal(policy_logits(mode, tokenizer, proteins, policy) >= cut, fp32)  # the test can fail
    P.with_fp32_fallback(mode, model, P.probe_logit_change(mode, model, tokenizer, proteins))
    assert torch.equal(policy_logits(mode, tokenizer, proteins, policy) >= cut, fp32)
