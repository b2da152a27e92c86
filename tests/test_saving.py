"""Issue 16: every model scilm saves holds the hub's tensor names (``LayerNorm.weight/bias``, never the
``gamma/beta`` transformers 5 writes back by default), read with ``safetensors`` alone, and transformers
still loads it identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, EsmForSequenceClassification

from scilm.models.loading import tied_keys
from scilm.models.protein import esm2_config, esm2_tokenizer, resolve_source
from scilm.models.saving import hub_tensor_names, save_model


def names(directory: Path) -> set[str]:
    with safe_open(str(Path(directory) / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


def assert_hub_names(directory: Path, model) -> None:
    keys = names(directory)
    assert not [k for k in keys if k.endswith((".gamma", ".beta"))]
    assert "esm.encoder.layer.0.attention.LayerNorm.weight" in keys
    assert "esm.encoder.layer.0.LayerNorm.bias" in keys
    own = set(model.state_dict()) - tied_keys(model)  # a tied weight is saved once, under its source
    # the hub's layout of the rotary frequencies: one copy per layer (fair-esm's), not transformers 5's one module
    shared = {k for k in own if k.endswith("rotary_embeddings.inv_freq")}
    prefix = "esm." if "esm.rotary_embeddings.inv_freq" in shared else ""
    layers = model.config.num_hidden_layers
    per_layer = {f"{prefix}encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq" for i in range(layers)}
    expected = (own - shared) | (per_layer if shared else set())
    assert keys == expected, keys ^ expected  # exactly the hub's names


def classifier():
    torch.manual_seed(0)
    return EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).eval()


def assert_loads_identically(directory: Path, model, auto=AutoModelForSequenceClassification) -> None:
    loaded = auto.from_pretrained(str(directory)).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    ids = esm2_tokenizer()(["MKTAYIAKQR"], return_tensors="pt")
    with torch.no_grad():
        # weights are bit-equal above; the attention kernel chosen at load may round differently
        torch.testing.assert_close(model(**ids).logits, loaded(**ids).logits, rtol=1e-5, atol=1e-6)


def test_transformers_default_writes_legacy_names_so_the_fix_is_needed(tmp_path):
    model = classifier()
    model.save_pretrained(str(tmp_path))
    if not any(k.endswith("LayerNorm.gamma") for k in names(tmp_path)):
        pytest.skip("this transformers writes hub names already")
    assert hub_tensor_names(tmp_path) == [tmp_path / "model.safetensors"]  # the repair of such a directory
    assert_hub_names(tmp_path, model)
    assert_loads_identically(tmp_path, model)
    assert hub_tensor_names(tmp_path) == []  # nothing left to do


def test_save_run_writes_hub_names(tmp_path):
    from scilm.training.common import save_run

    model = classifier()
    save_run(model, esm2_tokenizer(), tmp_path, lora=False)
    assert_hub_names(tmp_path / "model", model)
    assert_loads_identically(tmp_path / "model", model)


def test_merged_lora_save_writes_hub_names(tmp_path):
    from peft import TaskType

    from scilm.models.adapters import apply_lora, save_adapter_run

    merged = save_adapter_run(apply_lora(classifier(), 4, 8, 0.0, TaskType.SEQ_CLS), tmp_path / "model",
                              tmp_path / "adapter")
    assert_hub_names(tmp_path / "model", merged)
    assert_loads_identically(tmp_path / "model", merged)


def test_bench_fixture_and_shipped_model_have_hub_names(tmp_path):
    from scilm.bench.serve import save_random_classifier

    save_random_classifier(tmp_path / "clf", preset="esm2-tiny")
    assert_hub_names(tmp_path / "clf", AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "clf")))
    shipped = Path(resolve_source("esm2-tiny-mlm"))
    assert_hub_names(shipped, AutoModelForMaskedLM.from_pretrained(str(shipped)))


def test_save_model_keeps_metadata_and_values(tmp_path):
    model = classifier()
    save_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert handle.metadata().get("format") == "pt"
        torch.testing.assert_close(handle.get_tensor("esm.encoder.layer.1.LayerNorm.weight"),
                                   model.esm.encoder.layer[1].LayerNorm.weight, rtol=0, atol=0)


def test_rotary_frequencies_are_saved_per_layer_as_on_the_hub(tmp_path):
    """esm.cpp (and fair-esm-era readers) look up ``esm.encoder.layer.{i}.attention.self.rotary_embeddings
    .inv_freq``; every layer's copy holds the model's own frequencies, and transformers loads the file back
    to the same model."""
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    model = EsmForMaskedLM(esm2_config("esm2-tiny")).eval()
    save_model(model, tmp_path)
    expected = model.esm.rotary_embeddings.inv_freq
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    # RoFormer's frequencies, as fair-esm computes them: 1 / 10000^(2i/d)
    torch.testing.assert_close(expected, 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        for i in range(model.config.num_hidden_layers):
            name = f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"
            assert torch.equal(handle.get_tensor(name), expected), name
        assert "esm.rotary_embeddings.inv_freq" not in set(handle.keys())
    assert_loads_identically(tmp_path, model, AutoModelForMaskedLM)
    assert hub_tensor_names(tmp_path) == []  # already the hub's layout
