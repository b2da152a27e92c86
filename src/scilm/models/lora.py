"""LoRA through PEFT: the published recipe's targets, and saving merged model + adapter."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

# ESM-2 (SOURCES.md section 1): attention query/key/value and every dense layer of the encoder
# (attention output, intermediate, output). The classification head is trained in full.
ESM_LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)"
    r"|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
# T5: the attention projections and the feed-forward layers.
T5_LORA_TARGETS = ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"]


def apply_lora(
    model: PreTrainedModel, r: int, alpha: int, dropout: float, task_type: TaskType
) -> PeftModel:
    """Wrap ``model`` so that only LoRA adapters (and, for classifiers, the head) train."""
    targets = T5_LORA_TARGETS if model.config.model_type == "t5" else ESM_LORA_TARGETS
    config = LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=targets,
        # SEQ_CLS trains `classifier` in full through PEFT's modules_to_save
    )
    return get_peft_model(model, config)


def save_lora_run(model: PeftModel, model_dir: Path, adapter_dir: Path, **save_kwargs) -> PreTrainedModel:
    """Save the adapter to ``adapter_dir`` and the merged, plain model to ``model_dir``."""
    model.save_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(model_dir), **save_kwargs)
    return merged


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
