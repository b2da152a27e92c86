"""Parameter-efficient fine-tuning through PEFT: LoRA, DoRA, IA3, or a frozen backbone (linear probe).

Which layers each method adapts (:data:`METHODS`) follows the published recipes: ESM-2's LoRA
targets the attention query/key/value and every dense layer of the encoder (SOURCES.md section 1);
T5's the attention projections and feed-forward layers. DoRA (Liu et al. 2024) is LoRA with a
learned magnitude per output (PEFT's ``use_dora``) on the same layers. IA3 (Liu et al. 2022)
rescales keys, values and the feed-forward output (its ``feedforward_modules`` scale the layer
input). In every case the task head (``classifier`` / a regression head) trains in full: PEFT's
``modules_to_save`` for its SEQ_CLS / TOKEN_CLS task types, and it is saved in the adapter.
"""

from __future__ import annotations

from pathlib import Path

from peft import IA3Config, LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from scilm.errors import ScilmError, name

# ESM-2 (SOURCES.md section 1): attention query/key/value and every dense layer of the encoder
# (attention output, intermediate, output). The classification head is trained in full.
ESM_LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)"
    r"|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
# T5: the attention projections and the feed-forward layers.
T5_LORA_TARGETS = ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"]
# IA3 (Liu et al. 2022, PEFT's defaults for these architectures): keys, values, feed-forward output.
ESM_IA3_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"
ESM_IA3_FEEDFORWARD = r".*encoder\.layer\.\d+\.output\.dense"
T5_IA3_TARGETS, T5_IA3_FEEDFORWARD = ["k", "v", "wo"], ["wo"]

METHODS = ("lora", "dora", "ia3")
HEAD_MODULES = ("classifier", "score", "regressor")  # task heads that train in full under any method


def _is_t5(model: PreTrainedModel) -> bool:
    return model.config.model_type == "t5"


def peft_config(method: str, model: PreTrainedModel, task_type: TaskType, r: int = 8, alpha: int = 16,
                dropout: float = 0.05):
    """The PEFT config of ``method`` (lora | dora | ia3) for ``model``. Raises ScilmError for another method."""
    t5 = _is_t5(model)
    if method in ("lora", "dora"):
        return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                          target_modules=T5_LORA_TARGETS if t5 else ESM_LORA_TARGETS, use_dora=method == "dora")
    if method == "ia3":
        return IA3Config(task_type=task_type, target_modules=T5_IA3_TARGETS if t5 else ESM_IA3_TARGETS,
                         feedforward_modules=T5_IA3_FEEDFORWARD if t5 else ESM_IA3_FEEDFORWARD)
    raise ScilmError(f"{name('peft')} {method!r}: the methods are none, {', '.join(METHODS)}")


def apply_peft(model: PreTrainedModel, method: str, task_type: TaskType, r: int = 8, alpha: int = 16,
               dropout: float = 0.05) -> PreTrainedModel | PeftModel:
    """``model`` with only ``method``'s adapters (and the task head) trainable; ``none`` returns it as is."""
    if method == "none":
        return model
    return get_peft_model(model, peft_config(method, model, task_type, r, alpha, dropout))


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, task_type: TaskType) -> PeftModel:
    """LoRA with the published targets (:func:`apply_peft` with ``lora``)."""
    return apply_peft(model, "lora", task_type, r, alpha, dropout)


def freeze_backbone(model: PreTrainedModel) -> PreTrainedModel:
    """Only the task head trains (a linear probe on the frozen encoder's embeddings).

    Raises ScilmError when the model has no task head to train.
    """
    heads = [n for n, _ in model.named_children() if n in HEAD_MODULES]
    if not heads:
        raise ScilmError(f"{name('freeze_backbone')}: {type(model).__name__} has no task head to train alone")
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.split(".")[0] in heads)
    return model


def unwrap_trained_modules(model: PeftModel) -> None:
    """Put each fully trained module (PEFT's ``modules_to_save`` copy: the task head) in place of its wrapper.

    PEFT 0.21's IA3 unload fails on a wrapped head without a ``weight`` (ESM's classification head:
    ``AttributeError``), so the trained copy is put in place here, as LoRA's unload does, before merging.
    """
    from peft.utils import ModulesToSaveWrapper

    root = model.get_base_model()
    for key, module in list(root.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = key.rpartition(".")
            setattr(root.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])


def save_adapter_run(model: PeftModel, model_dir: Path, adapter_dir: Path, **save_kwargs) -> PreTrainedModel:
    """Save the adapter (with the trained head) to ``adapter_dir`` and the merged, plain model to ``model_dir``."""
    model.save_pretrained(str(adapter_dir))
    unwrap_trained_modules(model)
    merged = model.merge_and_unload()
    from scilm.models.saving import save_model

    save_model(merged, model_dir, **save_kwargs)  # hub tensor names
    return merged


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
