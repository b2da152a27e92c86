"""The last ESM layer at <cls> only (scilm/models/cls_only.py): the same logits and gradients as the full
layer, with and without padding, in both attention implementations, and never where it would change them."""

from __future__ import annotations

import pytest
import torch
from transformers import EsmForMaskedLM, EsmForSequenceClassification, EsmForTokenClassification
from transformers.models.esm.modeling_esm import EsmLayer

from scilm.models.cls_only import ClsOnlyEsmLayer, cls_only_last_layer, last_layer_if_applicable
from scilm.models.protein import esm2_config, esm2_tokenizer

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ" * 3, "MLLAVLYCLAVFALSSRA", "ACDEFGHIKLMNPQRSTVWY" * 2]


@pytest.fixture(scope="module")
def batch():
    return esm2_tokenizer()(SEQUENCES, return_tensors="pt", padding=True)  # padded: a mask in every layer


def cls_only_calls(monkeypatch) -> list:
    """A list that gets one entry per call of the <cls>-only layer's forward (which still runs)."""
    calls: list = []
    forward = ClsOnlyEsmLayer.forward
    monkeypatch.setattr(ClsOnlyEsmLayer, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    return calls


def classifier(num_labels=3, problem_type=None, attn="sdpa", seed=0):
    torch.manual_seed(seed)
    extra = {"problem_type": problem_type} if problem_type else {}
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=num_labels, **extra))
    model.config._attn_implementation = attn
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_logits_and_gradients_equal_the_full_layers(batch, attn, training):
    model = classifier(attn=attn).train(training)
    params = [p for n, p in model.named_parameters() if "contact_head" not in n]  # the head no logit reads
    full = model(**batch).logits
    full_grads = torch.autograd.grad(full.square().sum(), params)
    with cls_only_last_layer(model) as applied:
        assert applied and type(model.esm.encoder.layer[-1]) is ClsOnlyEsmLayer
        short = model(**batch).logits
        short_grads = torch.autograd.grad(short.square().sum(), params)
    assert type(model.esm.encoder.layer[-1]) is EsmLayer  # restored
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)
    scale = max(float(g.abs().max()) for g in full_grads)
    names = [n for n, _ in model.named_parameters() if "contact_head" not in n]
    for name, got, expected in zip(names, short_grads, full_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * scale, msg=lambda m, n=name: f"{n}: {m}")
    # the work skipped is real: the last hidden state inside is <cls>'s alone
    with cls_only_last_layer(model):
        assert model.esm(**batch).last_hidden_state.shape == (len(SEQUENCES), 1, model.config.hidden_size)


def test_without_padding_too():
    encoded = esm2_tokenizer()(["MKTAYIAKQRQ", "MLLAVLYCLAV"], return_tensors="pt")  # equal lengths: no mask
    model = classifier(num_labels=1, problem_type="regression").eval()
    expected = model(**encoded).logits
    with cls_only_last_layer(model):
        torch.testing.assert_close(model(**encoded).logits, expected, rtol=1e-5, atol=1e-6)


def test_restored_when_the_forward_fails(batch, monkeypatch):
    model = classifier().eval()

    def broken(self, attention_output):
        raise RuntimeError("boom inside the <cls>-only layer")

    monkeypatch.setattr(ClsOnlyEsmLayer, "feed_forward_chunk", broken)
    with pytest.raises(RuntimeError, match="boom inside"):
        with cls_only_last_layer(model):
            model(**batch)
    layer = model.esm.encoder.layer[-1]
    assert type(layer) is EsmLayer and not hasattr(layer, "_scilm_cls_only_thread")
    model(**batch)  # the full layer again (the broken method is ClsOnlyEsmLayer's only)


def test_hidden_states_asked_for_inside_are_the_full_layers(batch):
    """A caller that asks for hidden states or attentions inside the block gets the full layer's, not a
    (B, 1, H) last state that broadcasting would silently turn into wrong pooled values."""
    model = classifier().eval()
    expected = model(**batch, output_hidden_states=True, output_attentions=True)
    with cls_only_last_layer(model) as applied:
        assert applied
        got = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states) and len(got.attentions) == len(expected.attentions)
    for mine, theirs in zip(got.hidden_states + got.attentions, expected.hidden_states + expected.attentions):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    model.config.output_hidden_states = True  # asked for by the config (a saved config.json): not used at all
    with cls_only_last_layer(model) as applied:
        assert not applied


def test_another_threads_inference_runs_the_full_layer(batch):
    import threading

    model = classifier().eval()
    shapes = []
    with cls_only_last_layer(model):
        with torch.inference_mode():
            def serve_one():  # a server's worker: its own inference forward (grad mode is per thread)
                with torch.inference_mode():
                    shapes.append(model.esm(**batch).last_hidden_state.shape)

            worker = threading.Thread(target=serve_one)
            worker.start()
            worker.join()
            shapes.append(model.esm(**batch).last_hidden_state.shape)  # this thread's: <cls> only
    assert shapes == [batch["input_ids"].shape + (model.config.hidden_size,), (len(SEQUENCES), 1, model.config.hidden_size)]


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_through_a_peft_wrapper(batch, method):
    from peft import TaskType

    from scilm.models.adapters import apply_peft

    model = apply_peft(classifier(), method, TaskType.SEQ_CLS, dropout=0.0).eval()
    for name, param in model.named_parameters():  # adapters start as the identity: make them matter
        if any(key in name for key in ("lora_B", "ia3_l", "lora_magnitude")):
            torch.nn.init.normal_(param, mean=1.0 if "lora_B" not in name else 0.0, std=0.05)
    expected = model(**batch).logits
    with cls_only_last_layer(model) as applied:
        assert applied
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-6)


def test_served_logits_equal_the_full_layers(monkeypatch, tmp_path):
    import contextlib

    from scilm.inference import predict
    from scilm.serving import models as served_models

    model = classifier().eval()
    served = served_models.ServedClassifier(model, esm2_tokenizer(), tmp_path)
    used = cls_only_calls(monkeypatch)
    with_it = served.run_batch(None, SEQUENCES)
    assert used
    monkeypatch.setattr(predict, "cls_only_last_layer", contextlib.nullcontext)  # the server runs predict's forward
    without = served.run_batch(None, SEQUENCES)
    torch.testing.assert_close(torch.tensor(with_it), torch.tensor(without), rtol=1e-5, atol=1e-6)


def _not_applicable():
    torch.manual_seed(0)
    config = esm2_config("esm2-tiny", num_labels=3)
    yield "per-residue", EsmForTokenClassification(config).eval()
    yield "masked LM", EsmForMaskedLM(esm2_config("esm2-tiny")).eval()
    dropout = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3, hidden_dropout_prob=0.1)).train()
    yield "dropout while training", dropout
    from scilm.inference.precision import apply_mode, fbgemm_available

    if fbgemm_available():
        yield "dynamic int8 (per-tensor activation scales)", apply_mode(classifier().eval(), "int8-fbgemm")


@pytest.mark.parametrize("case", list(_not_applicable()), ids=lambda case: case[0])
def test_not_used_where_it_would_change_the_answer(batch, case):
    _, model = case
    with cls_only_last_layer(model) as applied:
        assert not applied
        assert all(type(layer) is EsmLayer for layer in model.base_model.encoder.layer)
    assert last_layer_if_applicable(model) is None


def test_predict_reports_the_full_layers_logits(monkeypatch):
    """``predict``'s logits (batched, padded, with windows) equal those with the context turned off."""
    import contextlib

    from scilm.inference import predict as predict_module
    from scilm.inference.policy import WindowPolicy

    model = classifier().eval()
    tokenizer = esm2_tokenizer()
    used = cls_only_calls(monkeypatch)
    for policy in (predict_module.model_policy(model.config, tokenizer), WindowPolicy(max_residues=20, stride=10)):
        used.clear()
        with_it = predict_module.policy_logits(model, tokenizer, SEQUENCES, policy, batch_size=2)
        assert used  # predict ran the <cls>-only layer
        with monkeypatch.context() as patched:
            patched.setattr(predict_module, "cls_only_last_layer", contextlib.nullcontext)
            without = predict_module.policy_logits(model, tokenizer, SEQUENCES, policy, batch_size=2)
        torch.testing.assert_close(with_it, without, rtol=1e-5, atol=1e-6)


def test_sifting_scores_are_the_full_layers(batch, monkeypatch):
    """The relative policy's scoring pass (training/sifting.py) uses it: same per-sample losses."""
    from scilm.sifting import SequenceClassificationLoss
    from scilm.training.sifting import ClsOnlyScoring

    model = classifier().eval()
    labelled = {**batch, "labels": torch.tensor([0, 2, 1])}
    seen = cls_only_calls(monkeypatch)
    expected = SequenceClassificationLoss().loss(model, labelled)
    assert not seen
    got = ClsOnlyScoring(SequenceClassificationLoss()).loss(model, labelled)
    assert seen  # the last layer ran at <cls> only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
