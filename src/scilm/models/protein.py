"""ESM-2 protein models: offline presets with the real vocabulary, or any hub id / local directory.

Presets are built from a config with random weights, so nothing is downloaded. ``esm2-tiny`` is
small enough to learn the bundled task on a laptop CPU; the ``esm2-8m`` .. ``esm2-650m`` presets
have the exact shapes of the released checkpoints, for cost measurements.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EsmConfig,
    EsmForSequenceClassification,
    EsmModel,
    EsmTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from scilm.errors import ScilmError
from scilm.models.loading import load_pretrained

# Shared by every ESM-2 size (values of the released facebook/esm2_* configs).
_ESM2_COMMON = dict(
    vocab_size=33,
    pad_token_id=1,
    mask_token_id=32,
    position_embedding_type="rotary",
    max_position_embeddings=1026,
    emb_layer_norm_before=False,
    token_dropout=True,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,  # > 0 forces the slow (eager) attention path
)

# name -> (layers, hidden size, attention heads, intermediate size)
PROTEIN_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "esm2-tiny": (2, 128, 4, 512),
    "esm2-8m": (6, 320, 20, 1280),  # facebook/esm2_t6_8M_UR50D
    "esm2-35m": (12, 480, 20, 1920),  # facebook/esm2_t12_35M_UR50D
    "esm2-150m": (30, 640, 20, 2560),  # facebook/esm2_t30_150M_UR50D
    "esm2-650m": (33, 1280, 20, 5120),  # facebook/esm2_t33_650M_UR50D
}


def esm2_tokenizer() -> EsmTokenizer:
    """The ESM-2 tokenizer from the 33-token vocabulary shipped with scilm (identical to the hub's)."""
    vocab = resources.files("scilm.models").joinpath("esm2_vocab.txt")
    with resources.as_file(vocab) as path:
        return EsmTokenizer(vocab_file=str(path))


def esm2_config(preset: str, **overrides) -> EsmConfig:
    """An :class:`EsmConfig` with the shape of ``preset``; ``overrides`` win (e.g. ``num_labels``)."""
    if preset not in PROTEIN_PRESETS:
        raise ScilmError(f"unknown preset {preset!r}; presets are: {', '.join(PROTEIN_PRESETS)}")
    layers, hidden, heads, intermediate = PROTEIN_PRESETS[preset]
    return EsmConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        **{**_ESM2_COMMON, **overrides},
    )


def is_preset(name: str) -> bool:
    return name in PROTEIN_PRESETS


# Checkpoints trained by scilm itself and shipped with it (each folder's README says how).
SHIPPED_MODELS = {"esm2-tiny-mlm": "esm2-tiny-mlm"}


def resolve_source(name_or_path: str) -> str:
    """A shipped checkpoint's directory, an existing local directory, or a hub id (checked as such)."""
    if name_or_path in SHIPPED_MODELS:
        return str(Path(__file__).resolve().parent / "pretrained" / SHIPPED_MODELS[name_or_path])
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise ScilmError(f"--model {name_or_path}: no such model directory")
    return str(path) if looks_local else name_or_path


def _label_maps(labels: list[str]) -> dict:
    return dict(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def load_protein_classifier(
    name_or_path: str, labels: list[str], seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier for ``labels`` (a new head when the labels differ) and its tokenizer."""
    if is_preset(name_or_path):
        torch.manual_seed(seed)  # the random init is part of the run's seed
        model = EsmForSequenceClassification(esm2_config(name_or_path, **_label_maps(labels)))
        return model, esm2_tokenizer()
    name_or_path = resolve_source(name_or_path)
    try:
        model = load_pretrained(AutoModelForSequenceClassification, name_or_path, new_head=("classifier.",),
                                unused=("lm_head.",), use_safetensors=True, ignore_mismatched_sizes=True,
                                **_label_maps(labels))
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load ({_first_line(exc)})") from None
    return model, tokenizer


def load_trained_classifier(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A classifier saved by ``scilm train`` (or any local/hub classifier), in eval mode."""
    path = resolve_source(path)
    try:
        model = load_pretrained(AutoModelForSequenceClassification, path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ScilmError(f"--model {path}: cannot load ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def load_protein_encoder(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The bare ESM encoder (no head) of a preset, a trained classifier directory or a hub id."""
    if is_preset(name_or_path):
        return EsmModel(esm2_config(name_or_path), add_pooling_layer=False).eval(), esm2_tokenizer()
    name_or_path = resolve_source(name_or_path)
    try:
        # a classifier's or masked LM's encoder: its head is not needed to embed
        model = load_pretrained(AutoModel, name_or_path, unused=("classifier.", "lm_head."), use_safetensors=True,
                                add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

