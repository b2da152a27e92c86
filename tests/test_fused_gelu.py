"""ESM-2's GELU in one kernel (scilm/models/fused_gelu.py): the same function as transformers' five-pass
formula to float rounding, in every model scilm loads, through training, PEFT, saving and the int8 modes."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import EsmForMaskedLM, EsmForSequenceClassification, EsmForTokenClassification, EsmModel
from transformers.models.esm import modeling_esm
from transformers.models.esm.modeling_esm import EsmIntermediate

from scilm.models.fused_gelu import FusedGeluEsmIntermediate, use_fused_gelu
from scilm.models.protein import esm2_config, esm2_tokenizer

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ" * 3, "MLLAVLYCLAVFALSSRA", "ACDEFGHIKLMNPQRSTVWY" * 2]


def fused_count(model) -> tuple[int, int]:
    """(intermediates using the fused GELU, intermediates of transformers' class)."""
    kinds = [type(m) for m in model.modules()]
    return kinds.count(FusedGeluEsmIntermediate), kinds.count(EsmIntermediate)


@pytest.fixture(scope="module")
def batch():
    return esm2_tokenizer()(SEQUENCES, return_tensors="pt", padding=True)


def test_the_activation_is_transformers_gelu_to_float_rounding():
    x = torch.cat([torch.linspace(-30, 30, 600_001), torch.randn(100_000) * 4]).requires_grad_()
    weights = torch.randn_like(x)
    mine = torch.nn.functional.gelu(x)
    theirs = modeling_esm.gelu(x)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert not torch.equal(mine, theirs)  # two computations, not one function under two names
    grad_mine, = torch.autograd.grad((mine * weights).sum(), x)
    grad_theirs, = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(grad_mine, grad_theirs, rtol=0, atol=1e-5 * float(weights.abs().max()))


def test_the_module_is_transformers_intermediate_to_float_rounding():
    """The swapped module itself, on pre-activations over [-8, 8] (where the tanh approximation is off by
    up to ~5e-4, so a wrong GELU cannot pass), and its gradients."""
    torch.manual_seed(4)
    config = esm2_config("esm2-tiny")
    original = EsmIntermediate(config)
    with torch.no_grad():
        original.dense.weight.normal_(0, 8 / config.hidden_size ** 0.5)  # pre-activations of sd ~4.6
    fused = copy.deepcopy(original)
    assert use_fused_gelu(fused) == 1 and type(fused) is FusedGeluEsmIntermediate
    x = torch.randn(3, 50, config.hidden_size, requires_grad=True)
    expected, got = original(x), fused(x)
    assert float(original.dense(x).abs().max()) > 8  # the range is covered
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    tanh = torch.nn.functional.gelu(original.dense(x), approximate="tanh")
    assert float((tanh - expected).abs().max()) > 1e-4  # the inputs tell the two GELUs apart
    weights = torch.randn_like(expected)
    grads = [torch.autograd.grad((y * weights).sum(), [x, m.dense.weight]) for y, m in ((got, fused), (expected, original))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_trained_model_gives_transformers_hidden_states(batch):
    """The shipped pre-trained esm2-tiny-mlm (larger pre-activations than a random init), as scilm loads it
    against the same weights with transformers' class put back."""
    from scilm.inference.variants import load_masked_lm

    model, _ = load_masked_lm("esm2-tiny-mlm")
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) is FusedGeluEsmIntermediate:
            module.__class__ = EsmIntermediate
    assert fused_count(reference) == (0, model.config.num_hidden_layers)
    with torch.inference_mode():
        got = model(**batch, output_hidden_states=True)
        expected = reference(**batch, output_hidden_states=True)
    for layer, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=layer: f"hidden state {i}: {m}")
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_an_encoder_gives_transformers_hidden_states(batch, attn):
    torch.manual_seed(0)
    config = esm2_config("esm2-tiny")
    config._attn_implementation = attn
    reference = EsmModel(config, add_pooling_layer=False).eval()
    model = copy.deepcopy(reference)
    assert use_fused_gelu(model) == config.num_hidden_layers == fused_count(model)[0]
    assert fused_count(model)[1] == 0 and use_fused_gelu(model) == config.num_hidden_layers  # idempotent
    assert list(model.state_dict()) == list(reference.state_dict())  # same parameters, same names
    with torch.inference_mode():
        expected = reference(**batch, output_hidden_states=True).hidden_states
        got = model(**batch, output_hidden_states=True).hidden_states
    for layer, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=layer: f"hidden state {i}: {m}")


@pytest.mark.parametrize("kind", [EsmForSequenceClassification, EsmForTokenClassification, EsmForMaskedLM])
def test_a_training_step_gives_transformers_loss_and_gradients(batch, kind):
    torch.manual_seed(1)
    reference = kind(esm2_config("esm2-tiny", num_labels=3)).train()
    model = copy.deepcopy(reference)
    use_fused_gelu(model)
    if kind is EsmForSequenceClassification:
        labels = torch.tensor([0, 2, 1])
    else:
        labels = batch["input_ids"].clone() % 3 if kind is EsmForTokenClassification else batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
    losses, grads = [], []
    for net in (reference, model):
        loss = net(**batch, labels=labels).loss
        params = [p for n, p in net.named_parameters() if "contact_head" not in n and p.requires_grad]
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    for got, expected in zip(*grads):
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_every_loader_of_scilm_returns_fused_models(tmp_path):
    from scilm.inference.variants import load_masked_lm
    from scilm.models.protein import load_protein_classifier, load_protein_encoder, load_trained_classifier
    from scilm.models.saving import save_model
    from scilm.training.recipes.mlm.recipe import load_model

    layers = esm2_config("esm2-tiny").num_hidden_layers
    classifier, tokenizer = load_protein_classifier("esm2-tiny", ["a", "b"])
    residue, _ = load_protein_classifier("esm2-tiny", ["a", "b"], per_residue=True)
    save_model(classifier, tmp_path / "trained")
    tokenizer.save_pretrained(str(tmp_path / "trained"))
    # the saved file is what transformers writes: no trace of the swap in the tensor names
    assert not any("fused" in key.lower() for key in load_file(str(tmp_path / "trained" / "model.safetensors")))
    loaded = {
        "classifier (preset)": classifier,
        "per-residue (preset)": residue,
        "classifier (directory)": load_protein_classifier(str(tmp_path / "trained"), ["a", "b", "c"])[0],
        "trained classifier": load_trained_classifier(str(tmp_path / "trained"))[0],
        "encoder (preset)": load_protein_encoder("esm2-tiny")[0],
        "encoder (directory)": load_protein_encoder(str(tmp_path / "trained"))[0],
        "masked LM (shipped)": load_masked_lm("esm2-tiny-mlm")[0],
        "masked LM (preset, mlm recipe)": load_model("esm2-tiny")[0],
        "masked LM (shipped, mlm recipe)": load_model("esm2-tiny-mlm")[0],
    }
    for name, model in loaded.items():
        assert fused_count(model) == (model.config.num_hidden_layers, 0), name
    assert fused_count(loaded["classifier (preset)"])[0] == layers  # the preset's own depth, not a shared count


def test_peft_adapters_and_bf16_weights_keep_it(batch):
    from peft import LoraConfig, get_peft_model

    from scilm.inference.precision import apply_mode

    torch.manual_seed(2)
    reference = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3)).eval()
    model = copy.deepcopy(reference)
    use_fused_gelu(model)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value", "dense"], init_lora_weights=False)
    torch.manual_seed(3)
    peft_reference = get_peft_model(copy.deepcopy(reference), lora)
    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(model), lora)
    assert fused_count(peft_model)[0] == reference.config.num_hidden_layers
    with torch.inference_mode():
        torch.testing.assert_close(peft_model(**batch).logits, peft_reference(**batch).logits, rtol=1e-5, atol=1e-5)
    assert fused_count(apply_mode(copy.deepcopy(model), "bf16-weights"))[0] == reference.config.num_hidden_layers


@pytest.mark.parametrize("mode", ["int8-fbgemm", "int8"])
def test_int8_modes_keep_it(batch, mode):
    from scilm.inference.precision import apply_mode, fbgemm_available

    if mode == "int8-fbgemm" and not fbgemm_available():
        pytest.skip("this torch build has no FBGEMM int8 Linear")
    if mode == "int8":
        pytest.importorskip("torchao")
    torch.manual_seed(2)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=3)).eval()
    use_fused_gelu(model)
    quantized = apply_mode(copy.deepcopy(model), mode)
    assert fused_count(quantized) == (model.config.num_hidden_layers, 0)
    with torch.inference_mode():  # runs, and still computes the same classifier (int8's own guard is elsewhere)
        assert quantized(**batch).logits.shape == (len(SEQUENCES), 3)


def test_models_without_esm_layers_are_untouched():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=40))
    kinds = [type(m) for m in model.modules()]
    assert use_fused_gelu(model) == 0 and [type(m) for m in model.modules()] == kinds
