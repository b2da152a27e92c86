"""Text+Chem T5 models: a hub id (the released checkpoints, unchanged), a local directory, or the
offline preset ``t5-tiny`` whose tokenizer is trained on the training corpus.

The ``t5-tiny`` tokenizer is a byte-pair encoding (Hugging Face ``tokenizers``) over SMILES-aware
pre-tokens, so no token ever spans two SMILES atoms: bracket atoms (``[C@@H]``, ``[Na+]``),
``Br`` / ``Cl``, ring closures (``1``, ``%10``) and bond symbols are pieces of their own that BPE
may only merge *within*. The Molecular Transformer regex (:mod:`scilm.chem.tokenize`) alone would
also cut English words at atom-like letters (``m|o|le|c|ule``); so a run of letters containing a
letter no SMILES uses outside brackets (``a d e f g h i j k m q t u v w x y z``) is taken as a word
first. Short words made only of SMILES letters (``on``, ``or``) still fall apart into letters;
text round-trips exactly either way. Spaces are kept as ``▁`` on the following piece, as in
sentencepiece, so ``decode(encode(x)) == x`` for any text of printable ASCII characters (all of
them are in the alphabet, backslash included; other characters unseen in training become <unk>).

Released checkpoints (GT4SD ``multitask-text-and-chemistry-t5-*``) keep T5's stock sentencepiece
tokenizer (``spiece.model``), which was trained on English web text: it has no piece for some
SMILES characters (``\\`` and ``~`` among them), so they are read and written as ``<unk>``.
:func:`unrepresentable_smiles_characters` finds which, once per tokenizer, when the model loads;
:func:`scilm.inference.generate.repair_unknowns` puts them back into generated SMILES.
"""

from __future__ import annotations

import logging
import string
import weakref
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from scilm.chem.tokenize import SMILES_REGEX
from scilm.errors import ScilmError
from scilm.models.loading import load_pretrained
from scilm.models.protein import _first_line, load_tokenizer, resolve_source

log = logging.getLogger(__name__)

# name -> T5Config shape. Dropout 0: a tiny model on tiny data underfits, it does not overfit.
SEQ2SEQ_PRESETS: dict[str, dict] = {
    "t5-tiny": dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.0, feed_forward_proj="relu"),
}
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2: T5's order (decoder starts with <pad>)
SPACE = "\u2581"  # "▁", sentencepiece's visible space
# A letter run with a lowercase letter SMILES never uses outside brackets is a word, not atoms.
WORD = r"[A-Za-z]*[adefghijkmqtuvwxyz][A-Za-z]*"
PRETOKEN_REGEX = f"{SPACE}?(?:{WORD}|{SMILES_REGEX[1:-1]})"
ALPHABET = sorted(set(string.printable) - set(string.whitespace) | {SPACE})


# Characters SMILES and Text+Chem's reaction format write besides letters (atoms): bonds, branches,
# brackets, charges, ring closures, ``.`` sets, ``~`` salts, ``>`` reactions, ``*`` / ``$`` / ``?``.
SMILES_SYMBOLS = "\\~/()[]=#-+:@%.>*$?0123456789"
_UNREPRESENTABLE: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def unrepresentable_smiles_characters(tokenizer: PreTrainedTokenizerBase) -> str:
    """The characters of :data:`SMILES_SYMBOLS` that ``tokenizer`` cannot write, in that order.

    A character counts as representable when ``C<c>C`` encodes and decodes back to itself (what
    generation needs: the model can only emit what the vocabulary can spell). T5's stock
    sentencepiece vocabulary gives ``"\\~"``; scilm's own ``t5-tiny`` tokenizer gives ``""``.
    Computed once per tokenizer object (cached).
    """
    try:
        return _UNREPRESENTABLE[tokenizer]
    except (KeyError, TypeError):
        pass
    missing = ""
    for char in SMILES_SYMBOLS:
        ids = tokenizer(f"C{char}C", add_special_tokens=False)["input_ids"]
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.strip() != f"C{char}C":
            missing += char
    try:
        _UNREPRESENTABLE[tokenizer] = missing
    except TypeError:  # not weak-referenceable: computed again next time, same answer
        pass
    return missing


def is_seq2seq_preset(name: str) -> bool:
    """Whether ``name`` is one of scilm's offline T5 presets (e.g. ``t5-tiny``), not a hub id or path."""
    return name in SEQ2SEQ_PRESETS


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2,
                    model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A SMILES-aware BPE tokenizer trained on ``texts``, with T5's <pad>/</s>/<unk> (ids 0/1/2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True),
        pre_tokenizers.Split(Regex(PRETOKEN_REGEX), behavior="isolated"),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, EOS, UNK], initial_alphabet=ALPHABET,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def t5_config(preset: str, tokenizer: PreTrainedTokenizerBase) -> T5Config:
    """The :class:`T5Config` of ``preset`` for ``tokenizer``'s vocabulary."""
    if preset not in SEQ2SEQ_PRESETS:
        raise ScilmError(f"unknown preset {preset!r}; seq2seq presets are: {', '.join(SEQ2SEQ_PRESETS)}")
    return T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                    **SEQ2SEQ_PRESETS[preset])


def load_seq2seq_model(name_or_path: str, corpus: Iterable[str] | None = None, vocab_size: int = 1000,
                       seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A T5 model to fine-tune and its tokenizer.

    A preset gets random weights and a tokenizer trained on ``corpus`` (the training texts); a hub
    id or directory is loaded as published (safetensors; the hub converts a .bin-only repository).
    """
    if is_seq2seq_preset(name_or_path):
        if corpus is None:
            raise ScilmError(f"preset {name_or_path} needs a training corpus for its tokenizer")
        tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
        torch.manual_seed(seed)  # the random init is part of the run's seed
        model = T5ForConditionalGeneration(t5_config(name_or_path, tokenizer))
        model.generation_config = GenerationConfig(
            decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id)
        return model, tokenizer
    return _load(name_or_path)


def load_trained_seq2seq(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A seq2seq model saved by ``scilm train`` (or a released checkpoint), in eval mode."""
    if is_seq2seq_preset(path):
        raise ScilmError(f"--model {path}: a preset is untrained; train it first with `scilm train`")
    model, tokenizer = _load(path)
    return model.eval(), tokenizer


def _load(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    name_or_path = resolve_source(name_or_path)
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").exists():
        raise ScilmError(f"--model {name_or_path}: no config.json (expected OUT/model of a seq2seq run)")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type != "t5":
            raise ScilmError(f"--model {name_or_path}: a {config.model_type} model, not a T5 seq2seq model")
        if (Path(name_or_path) / "spiece.model").is_file() and not (Path(name_or_path) / "tokenizer.json").is_file():
            from scilm._extras import optional_extra

            with optional_extra("chem"):  # transformers converts spiece.model with these two
                import google.protobuf  # noqa: F401
                import sentencepiece  # noqa: F401
        tokenizer = load_tokenizer(name_or_path, config)  # before the weights: fail fast, in one line
        model = load_pretrained(T5ForConditionalGeneration, name_or_path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ScilmError(f"--model {name_or_path}: cannot load as a T5 seq2seq model ({_first_line(exc)})") from None
    if getattr(model.generation_config, "max_time", None) is not None:  # generate would read it on every call
        log.warning("--model %s: its generation_config sets max_time=%s s, ignored: generate would stop there "
                    "with no sign that a text was cut short", name_or_path, model.generation_config.max_time)
        model.generation_config.max_time = None
    missing = unrepresentable_smiles_characters(tokenizer)
    if missing:  # the released checkpoints' stock T5 vocabulary (module docstring)
        log.warning("--model %s: its tokenizer cannot write %s (read and written as <unk>); generated SMILES "
                    "get them back, inputs and training targets holding them reach the model as <unk>",
                    name_or_path, " ".join(missing))
    return model, tokenizer
