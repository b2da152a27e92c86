"""PEFT beyond LoRA (issue 13 task 5): DoRA, IA3 and a frozen backbone each train a step on esm2-tiny-mlm, save,
and `scilm predict` on the saved (merged) model reproduces the logits of the run's own final validation; the
saved adapter on its base reproduces them too; trainable parameters are PEFT's count and the closed form of the
method; a frozen backbone changes only the head; QLoRA is refused on CPU in one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scilm.data.protein import read_proteins

BASE = "esm2-tiny-mlm"  # hidden 128, intermediate 512, 2 layers (as esm2-tiny)
HIDDEN, INTERMEDIATE, LAYERS, LABELS = 128, 512, 2, 2
HEAD = HIDDEN * HIDDEN + HIDDEN + HIDDEN * LABELS + LABELS  # classifier.dense + classifier.out_proj
R = 4
# per layer: LoRA's A (r x in) and B (out x r) on q, k, v, attention.output.dense (128->128),
# intermediate.dense (128->512), output.dense (512->128); DoRA adds a magnitude per output;
# IA3 scales key and value outputs and output.dense's input.
LORA = LAYERS * R * (4 * 2 * HIDDEN + 2 * (HIDDEN + INTERMEDIATE))
DORA = LORA + LAYERS * (4 * HIDDEN + INTERMEDIATE + HIDDEN)
IA3 = LAYERS * (2 * HIDDEN + INTERMEDIATE)
EXPECTED_TRAINABLE = {"lora": LORA + HEAD, "dora": DORA + HEAD, "ia3": IA3 + HEAD, "freeze": HEAD}


def switches(method: str) -> list[str]:
    if method == "freeze":
        return ["--freeze-backbone"]
    return ["--peft", method, *(["--lora-r", str(R), "--lora-dropout", "0"] if method != "ia3" else [])]


def assert_same_rows(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    """Equal as sets of rows: the Trainer evaluates in length-grouped order (transformers 5 applies
    group_by_length to its evaluation sampler too; metrics see predictions and labels permuted alike)."""
    order = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_allclose(order(actual), order(expected), atol=atol)


@pytest.fixture
def captured_logits(monkeypatch):
    """The logits each validation of the run saw, in validation-file order (the last: the final weights)."""
    from scilm.training.recipes.classification import recipe

    seen: list[np.ndarray] = []
    original = recipe.classification_metrics

    def record(logits, labels):
        seen.append(np.array(logits[0] if isinstance(logits, tuple) else logits, dtype=np.float64))
        return original(logits, labels)

    monkeypatch.setattr(recipe, "classification_metrics", record)
    return seen


@pytest.mark.parametrize("method", ["lora", pytest.param("dora", marks=pytest.mark.slow), "ia3", "freeze"])
def test_each_method_trains_saves_and_predict_reproduces_the_runs_validation(
        method, tiny_fastas, run_cli, tmp_path, captured_logits):
    from peft import PeftModel

    from scilm.models.protein import load_protein_classifier

    out = tmp_path / method
    result = run_cli("train", "--task", "membrane", "--data", tiny_fastas[0], "--valid", tiny_fastas[1], "--model",
                     BASE, "--max-steps", "2", "--batch-size", "8", "--truncate", "60", "--no-progress", "--out", out,
                     *switches(method))
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == EXPECTED_TRAINABLE[method]
    assert metrics["config"]["peft"] == ("none" if method == "freeze" else method)
    final = captured_logits[-1]  # (16, 2): the final validation's logits
    assert final.shape == (16, 2)

    # scilm predict on the saved, merged model: the run's final validation probabilities
    preds = tmp_path / "preds.csv"
    assert run_cli("predict", "--model", out / "model", "--data", tiny_fastas[1], "--out", preds).exit_code == 0
    with open(preds, newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = read_proteins(tiny_fastas[1], task="membrane")
    assert [r["id"] for r in rows] == [r.id for r in records]
    expected = torch.tensor(final).softmax(dim=-1).numpy()
    got = np.array([[float(r["prob_soluble"]), float(r["prob_membrane"])] for r in rows])
    assert_same_rows(got, expected, atol=1e-5)  # predict writes 6 decimals

    if method == "freeze":  # no adapter: the encoder is the base's, bit for bit; the head changed
        from safetensors.torch import load_file

        from scilm.models.protein import resolve_source

        assert not (out / "adapter").exists()
        base = load_file(str(Path(resolve_source(BASE)) / "model.safetensors"))
        saved = load_file(str(out / "model" / "model.safetensors"))
        encoder = [k for k in saved if k.startswith("esm.")]
        assert encoder and all(torch.equal(saved[k], base[k]) for k in encoder)
        from transformers import set_seed

        set_seed(0)  # the run's seed: the head's initialisation
        head, _ = load_protein_classifier(BASE, ["soluble", "membrane"], seed=0)
        init = head.state_dict()
        assert all(not torch.equal(saved[k], init[k]) for k in saved if k.startswith("classifier."))
        return
    # the saved adapter on its base model: the same logits (the merge changes nothing)
    base, tokenizer = load_protein_classifier(BASE, ["soluble", "membrane"], seed=0)
    adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    sequences = [r.sequence[:60] for r in records]
    with torch.inference_mode():
        encoded = tokenizer(sequences, padding=True, return_tensors="pt")
        logits = adapted(**encoded).logits.double().numpy()
    assert_same_rows(logits, final, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_trainable_parameters_are_pefts_count(method):
    from peft import TaskType

    from scilm.models.adapters import apply_peft, trainable_parameters
    from scilm.models.protein import load_protein_classifier
    from scilm.training.common import freeze_unused

    model, _ = load_protein_classifier(BASE, ["soluble", "membrane"], seed=0)
    freeze_unused(model)
    model = apply_peft(model, method, TaskType.SEQ_CLS, r=R, dropout=0.0)
    assert trainable_parameters(model) == model.get_nb_trainable_parameters()
    assert model.get_nb_trainable_parameters()[0] == EXPECTED_TRAINABLE[method]


def test_qlora_is_refused_on_cpu_in_one_line(run_cli, tiny_fastas, tmp_path):
    from scilm.errors import ScilmError
    from scilm.training.config import TrainConfig

    if torch.cuda.is_available():
        pytest.skip("QLoRA's refusal is the CPU's")
    with pytest.raises(ScilmError) as error:
        TrainConfig(data=str(tiny_fastas[0]), peft="qlora").validate()
    assert str(error.value).startswith("peft qlora ") and "CUDA" in str(error.value)
    out = tmp_path / "run"
    result = run_cli("train", "--data", tiny_fastas[0], "--peft", "qlora", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: --peft qlora ") and "CUDA" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags, shown", [
    (["--peft", "ia3", "--lora-r", "4"], "--lora-r shape LoRA/DoRA adapters, which --peft ia3 does not train"),
    (["--freeze-backbone", "--lora-alpha", "4"], "--lora-alpha shape LoRA/DoRA adapters, which --freeze-backbone"),
    (["--lora-dropout", "0"], "--lora-dropout shape LoRA/DoRA adapters, which --peft none does not train"),
])
def test_lora_settings_that_would_change_nothing_are_errors(run_cli, tiny_fastas, tmp_path, flags, shown):
    result = run_cli("train", "--data", tiny_fastas[0], "--out", tmp_path / "run", *flags)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {shown}")
    assert not (tmp_path / "run").exists()
