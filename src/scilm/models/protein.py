"""ESM-2 protein models: offline presets with the real vocabulary, or any hub id / local directory.

Presets are built from a config with random weights, so nothing is downloaded. ``esm2-tiny`` is
small enough to learn the bundled task on a laptop CPU; the ``esm2-8m`` .. ``esm2-650m`` presets
have the exact shapes of the released checkpoints, for cost measurements.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    EsmConfig,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
    EsmTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from scilm.errors import ScilmError
from scilm.models.fused_gelu import use_fused_gelu
from scilm.models.loading import load_pretrained

log = logging.getLogger(__name__)

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
    """Whether ``name`` is one of scilm's offline ESM-2 presets (``esm2-tiny``, ``esm2-8m`` ...), not a hub id."""
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


# Files any Hugging Face tokenizer is saved as; a directory with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json",
                   "tokenizer.model", "sentencepiece.bpe.model")


def is_esm2_vocabulary(config: PretrainedConfig) -> bool:
    """True for an ESM config whose embedding has ESM-2's 33 tokens (and its pad/mask ids, if given)."""
    return (getattr(config, "model_type", None) == "esm" and getattr(config, "vocab_size", None) == 33
            and getattr(config, "pad_token_id", 1) in (None, 1) and getattr(config, "mask_token_id", 32) in (None, 32))


def load_tokenizer(source: str, config: PretrainedConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model: the one loader every command uses (train, predict, embed,
    serve, pretrain, and the seq2seq commands).

    ``source`` is a local directory (as resolved by :func:`resolve_source`) or a hub id. A local
    directory without its tokenizer files (``config.json`` + ``model.safetensors`` only) falls back,
    for an ESM-2 config (``model_type`` esm, 33 tokens), to scilm's shipped ESM-2 vocabulary, with a
    one-line notice; any other model raises :class:`ScilmError` naming the missing file(s).
    """
    path = Path(source)
    if path.is_dir():
        if config is None:
            config = _load_config(source)
        present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
        esm_without_vocab = config.model_type == "esm" and not (path / "vocab.txt").is_file()
        if not present or esm_without_vocab:
            if is_esm2_vocabulary(config):
                log.warning("%s: no tokenizer files; using the ESM-2 vocabulary shipped with scilm "
                            "(the config is ESM-2's 33 tokens)", source)
                return esm2_tokenizer()
            missing = "vocab.txt" if config.model_type == "esm" else " / ".join(TOKENIZER_FILES[:4])
            raise ScilmError(f"--model {source}: no tokenizer ({missing} missing beside config.json); "
                             "save it with the model (tokenizer.save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, TypeError, ValueError) as exc:
        raise ScilmError(f"--model {source}: cannot load its tokenizer ({_first_line(exc)})") from None


def _load_config(source: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ScilmError(f"--model {source}: cannot load config.json ({_first_line(exc)})") from None


# -- the length policy: the residues a model was trained with, recorded in its config.json -----

MAX_RESIDUES_KEY = "scilm_max_residues"  # residues per sequence at training (specials excluded)
LONG_POLICY_KEY = "scilm_long_policy"  # how longer sequences were cut at training (scilm.inference.policy)
_HUGE = 1_000_000  # tokenizers without a real limit report model_max_length ~1e30


def record_max_residues(model, max_residues: int, long_policy: str | None = None) -> None:
    """Write the training truncation (and the long-protein policy, ``head`` | ``ends``, when given) into
    ``model.config`` (saved in ``config.json``), so that ``predict``, ``embed`` and ``serve`` default to
    them. Works through a PEFT wrapper (same config)."""
    setattr(model.config, MAX_RESIDUES_KEY, int(max_residues))
    if long_policy is not None:
        setattr(model.config, LONG_POLICY_KEY, str(long_policy))


def positional_max_residues(config: PretrainedConfig) -> int | None:
    """Residues the architecture can see: ESM offsets positions past the padding index, so
    1026 positions -> 1024 tokens -> 1022 residues between <cls> and <eos>."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    if getattr(config, "model_type", None) == "esm":
        positions -= 2
    return positions - 2


def max_residues(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """The one truncation default of ``predict``, ``embed`` and ``serve``: the length the model was
    trained with (:data:`MAX_RESIDUES_KEY` in config.json, written by ``scilm train`` / ``pretrain``),
    capped by what the positions and the tokenizer allow; 1022 (ESM-2's) when nothing is known."""
    limits = []
    recorded = getattr(config, MAX_RESIDUES_KEY, None)
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        limits.append(recorded)
    positional = positional_max_residues(config)
    if positional and positional > 0:
        limits.append(positional)
    n = getattr(tokenizer, "model_max_length", None)
    if n and 2 < n < _HUGE:
        limits.append(n - 2)
    return min(limits) if limits else 1022


def truncate_sequences(sequences: list[str], max_residues: int) -> tuple[list[str], int]:
    """Each sequence cut to ``max_residues`` (before tokenizing: ESM-2 has one token per residue),
    and how many were cut."""
    if max_residues < 1:
        raise ScilmError(f"--truncate must be at least 1 (got {max_residues})")
    cut = [s[:max_residues] for s in sequences]
    return cut, sum(len(s) > max_residues for s in sequences)


def load_protein_classifier(
    name_or_path: str, labels: list[str], seed: int = 0, problem_type: str | None = None, per_residue: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier for ``labels`` (a new head when the labels differ) and its tokenizer;
    with ``per_residue`` a token classifier (logits (B, T, len(labels)), one per token).

    ``problem_type`` (``regression``: one output per label; ``multi_label_classification``) is
    recorded in the model's config, which predict and serve read back.
    """
    extra = {"problem_type": problem_type} if problem_type else {}
    if is_preset(name_or_path):
        torch.manual_seed(seed)  # the random init is part of the run's seed
        esm_class = EsmForTokenClassification if per_residue else EsmForSequenceClassification
        model = esm_class(esm2_config(name_or_path, **_label_maps(labels), **extra))
        use_fused_gelu(model)
        return model, esm2_tokenizer()
    name_or_path = resolve_source(name_or_path)
    tokenizer = load_tokenizer(name_or_path)  # first: a missing tokenizer fails before the weights load
    auto_class = AutoModelForTokenClassification if per_residue else AutoModelForSequenceClassification
    try:
        model = load_pretrained(auto_class, name_or_path, new_head=("classifier.",),
                                unused=("lm_head.",), use_safetensors=True, ignore_mismatched_sizes=True,
                                **_label_maps(labels), **extra)
    except OSError as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load ({_first_line(exc)})") from None
    return model, tokenizer


def load_trained_classifier(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A classifier saved by ``scilm train`` (or any local/hub classifier), in eval mode: a token
    classifier when its config says so (:func:`is_per_residue`), else a sequence classifier."""
    path = resolve_source(path)
    tokenizer = load_tokenizer(path)
    config = _load_config(path)
    auto_class = AutoModelForTokenClassification if is_per_residue(config) else AutoModelForSequenceClassification
    try:
        model = load_pretrained(auto_class, path, use_safetensors=True)
    except OSError as exc:
        raise ScilmError(f"--model {path}: cannot load ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def is_per_residue(config: PretrainedConfig) -> bool:
    """A per-residue (token-classification) model, e.g. one trained by ``--task residue``."""
    return any(a.endswith("ForTokenClassification") for a in getattr(config, "architectures", None) or ())


def load_protein_encoder(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The bare ESM encoder (no head) of a preset, a trained classifier directory or a hub id."""
    if is_preset(name_or_path):
        model = EsmModel(esm2_config(name_or_path), add_pooling_layer=False)
        use_fused_gelu(model)
        return model.eval(), esm2_tokenizer()
    name_or_path = resolve_source(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    try:
        # a classifier's or masked LM's encoder: its head is not needed to embed
        model = load_pretrained(AutoModel, name_or_path, unused=("classifier.", "lm_head."), use_safetensors=True,
                                add_pooling_layer=False)
    except OSError as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
