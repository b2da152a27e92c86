"""Generation and evaluation for the five Text+Chem tasks (``scilm generate`` / ``scilm evaluate``).

Inputs are batched by length (little padding) and prefixed with the task's prompt (one definition:
:data:`scilm.data.textchem.PROMPTS`), decoded with beam search as in the published demo
(10 beams, at most 512 tokens). SMILES outputs come with their RDKit-canonical form and a validity
flag.

Backslashes: T5's stock sentencepiece vocabulary has no ``\\``, so the released checkpoints write
``<unk>`` where a SMILES has one (a run of unknown characters is one ``<unk>``). For the three
SMILES-output tasks a decoded ``<unk>`` is mapped back to ``\\`` (:data:`UNK_IN_SMILES`), as the
authors' demo does for text-to-SMILES. The demo writes two backslashes, the literal doubled form
of the ChEBI-20 files it was trained on; we write one, the SMILES bond symbol, which is what
``scilm data textchem`` writes and what RDKit reads (it accepts both, so validity and exact match
do not change). Text outputs keep ``<unk>`` visible. Models trained here with ``t5-tiny`` have
``\\`` in their vocabulary and never need this.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scilm.chem.evaluate import OTHER, evaluate_predictions, score_examples
from scilm.chem.smiles import canonical_smiles
from scilm.data.textchem import (
    MOLECULE_TASKS,
    PROMPTS,
    TASKS,
    TextChemExample,
    read_jsonl,
)
from scilm.errors import ScilmError
from scilm.inference.batching import length_sorted_batches
from scilm.models.seq2seq import load_trained_seq2seq
from scilm.io import check_output, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)

UNK_IN_SMILES = "\\"  # what a decoded <unk> stands for in a SMILES output (see the module docstring)
DEFAULT_SOURCE_TOKENS = 512  # source tokens kept when the tokenizer names no sensible limit


def load_seq2seq(path: str):
    """(model, tokenizer) of a trained run's ``OUT/model``, a local T5 directory or a hub id, in eval mode."""
    return load_trained_seq2seq(str(path))


def check_task(task: str) -> str:
    """Raises ScilmError unless ``task`` is one of the five Text+Chem task names (or None: any)."""
    if task not in PROMPTS:
        raise ScilmError(f"unknown task {task!r}; the tasks are: {', '.join(TASKS)}")
    return task


def _check_decoding(num_beams: int, max_length: int, batch_size: int) -> None:
    for name, value in (("num-beams", num_beams), ("max-length", max_length), ("batch-size", batch_size)):
        if value < 1:
            raise ScilmError(f"--{name} must be at least 1 (got {value})")


def decode(tokenizer, ids: list[int], smiles: bool) -> str:
    """One generated sequence as text: up to the first </s>, without padding, <unk> -> ``\\`` in SMILES."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    ids = [i for i in ids if i != tokenizer.pad_token_id]
    # keep <unk> (skip_special_tokens would drop it) and never "clean up" spaces: SMILES are exact
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if smiles and tokenizer.unk_token:
        text = text.replace(tokenizer.unk_token, UNK_IN_SMILES)
    return text.strip()


@torch.inference_mode()
def generate_sequences(model, tokenizer, sources: list[str], smiles: bool, batch_size: int = 8,
                       num_return_sequences: int = 1, **generation: Any) -> list[list[str]]:
    """``num_return_sequences`` generated texts for each full source (prompt included), in input order.

    ``generation`` goes to ``model.generate`` as is (``num_beams``, ``max_new_tokens``,
    ``do_sample``, ``temperature`` ...), with Transformers' meaning: ``max_new_tokens`` counts
    generated tokens, ``max_length`` the whole decoder sequence *including* its start token.
    Sampling draws from the global torch RNG: seed it (``torch.manual_seed``) around the call.
    """
    device = next(model.parameters()).device
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 100_000 else DEFAULT_SOURCE_TOKENS
    lengths = [len(ids) for ids in tokenizer(sources, truncation=True, max_length=limit)["input_ids"]]
    outputs: list[list[str]] = [[] for _ in sources]
    for batch in length_sorted_batches(lengths, batch_size):
        encoded = tokenizer([sources[i] for i in batch], padding=True, truncation=True, max_length=limit,
                            return_tensors="pt").to(device)
        generated = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                   num_return_sequences=num_return_sequences, **generation)
        for row, i in enumerate(batch):  # generate returns the k sequences of an input together
            rows = generated[row * num_return_sequences:(row + 1) * num_return_sequences]
            outputs[i] = [decode(tokenizer, ids.tolist(), smiles) for ids in rows]
    return outputs


def generate_from_sources(model, tokenizer, sources: list[str], smiles: bool, num_beams: int = 10,
                          max_length: int = 512, batch_size: int = 8) -> list[str]:
    """Generated text for each full source (prompt included), in input order.

    ``max_length`` is the number of generated tokens at most (``--max-length``), passed to
    ``generate`` as ``max_new_tokens``: Transformers' own ``max_length`` also counts T5's decoder
    start token, so it would give one token fewer.
    """
    _check_decoding(num_beams, max_length, batch_size)
    return [texts[0] for texts in generate_sequences(model, tokenizer, sources, smiles, batch_size,
                                                     num_beams=num_beams, max_new_tokens=max_length,
                                                     do_sample=False)]


def generate_texts(model, tokenizer, task: str, inputs: list[str], num_beams: int = 10, max_length: int = 512,
                   batch_size: int = 8) -> list[str]:
    """Outputs of ``task`` for raw ``inputs`` (no prompt): batched, length-sorted, in input order."""
    check_task(task)
    sources = [f"{PROMPTS[task]} {text}" for text in inputs]
    return generate_from_sources(model, tokenizer, sources, task in MOLECULE_TASKS, num_beams, max_length,
                                 batch_size)


def output_record(task: str, text: str, output: str) -> dict[str, Any]:
    """A JSON line of ``scilm generate``; SMILES outputs add ``canonical`` (or null) and ``valid``."""
    record: dict[str, Any] = {"task": task, "input": text, "output": output}
    if task in MOLECULE_TASKS:
        canonical = canonical_smiles(output)
        record.update(canonical=canonical, valid=canonical is not None)
    return record


def read_inputs(inputs: list[str], input_file: Path | None) -> list[str]:
    """Command-line inputs, then the non-empty lines of ``input_file``."""
    texts = [text.strip() for text in inputs]
    if input_file is not None:
        from scilm.data.textio import open_text

        with open_text(input_file, what="--input-file ") as handle:  # BOM ignored, .gz read
            texts += [line.strip() for line in handle if line.strip()]
    if not texts or not all(texts):
        raise ScilmError("no inputs: give INPUT arguments or --input-file with one input per line"
                         if not texts else "an input is empty")
    return texts


def generate_command(model: str, task: str, inputs: list[str], input_file: Path | None, num_beams: int,
                     max_length: int, batch_size: int, out: Path | None) -> list[dict]:
    """``scilm generate``: one JSON line per input, to ``out`` (atomically) or stdout."""
    check_task(task)
    texts = read_inputs(inputs, input_file)
    _check_decoding(num_beams, max_length, batch_size)
    if out is not None:  # before the model loads and generates: a bad --out fails at once
        check_output(Path(out), [input_file])
    net, tokenizer = load_seq2seq(model)
    outputs = generate_texts(net, tokenizer, task, texts, num_beams, max_length, batch_size)
    records = [output_record(task, text, output) for text, output in zip(texts, outputs)]
    if out is None:
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        write_jsonl_atomic(Path(out), records, [input_file])
        print(f"wrote {len(records)} records to {out}", file=sys.stderr)
    return records


def predict_examples(net, tokenizer, examples: list[TextChemExample], num_beams: int, max_length: int,
                     batch_size: int) -> list[str]:
    """A prediction per example (its source as written, prompt included), one task at a time."""
    predictions = [""] * len(examples)
    for task in dict.fromkeys(e.task or OTHER for e in examples):
        index = [i for i, e in enumerate(examples) if (e.task or OTHER) == task]
        outputs = generate_from_sources(net, tokenizer, [examples[i].source for i in index],
                                        task in MOLECULE_TASKS, num_beams, max_length, batch_size)
        for i, output in zip(index, outputs):
            predictions[i] = output
    return predictions


def evaluate_command(model: str, data: Path, out: Path, predictions: Path | None, num_beams: int,
                     max_length: int, batch_size: int) -> dict[str, Any]:
    """``scilm evaluate``: generate for every example, score per task, write metrics and predictions."""
    _check_decoding(num_beams, max_length, batch_size)
    out = check_output(Path(out), [data])
    predictions = Path(predictions) if predictions else out.with_name(f"{out.stem}.predictions.jsonl")
    check_output(predictions, [data, out], option="--predictions")
    examples = read_jsonl(data, require_task=False)
    unknown = sum(e.task is None for e in examples)
    if unknown:
        log.warning("%s: %d example(s) start with none of the five prompts; scored as %r (BLEU-2, exact match)",
                    data, unknown, OTHER)
    net, tokenizer = load_seq2seq(model)
    started = time.perf_counter()
    predicted = predict_examples(net, tokenizer, examples, num_beams, max_length, batch_size)
    runtime = time.perf_counter() - started
    write_jsonl_atomic(predictions, score_examples(examples, predicted), [data])
    metrics = {"model": str(model), "data": str(data), "n": len(examples), "num_beams": num_beams,
               "max_length": max_length, "generation_seconds": runtime, "predictions": str(predictions),
               "tasks": evaluate_predictions(examples, predicted)}
    write_json_atomic(out, metrics)
    for task, values in metrics["tasks"].items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items()
                          if isinstance(v, float) and not k.endswith("valid_only"))
        print(f"{task} (n={values['n']}): {shown}")
    print(f"wrote {out} and {predictions}")
    return metrics
