"""Generation and evaluation for the five Text+Chem tasks (``scilm generate`` / ``scilm evaluate``).

Inputs are batched by length (little padding) and prefixed with the task's prompt (one definition:
:data:`scilm.data.textchem.PROMPTS`), decoded with beam search as in the published demo
(10 beams, at most 512 tokens). SMILES outputs come with their RDKit-canonical form and a validity
flag. ``evaluate`` keeps the beam's ranked candidates for top-k exact match, and optionally scores
round trips through a forward model and re-spelled inputs (:mod:`scilm.chem.ranking`).

Characters the vocabulary lacks: T5's stock sentencepiece vocabulary (the released GT4SD
checkpoints) cannot write ``\\`` or ``~``, so those models emit ``<unk>`` where a SMILES has one
(a run of unknown characters is one ``<unk>``). Which characters a tokenizer lacks is found at load
(:func:`scilm.models.seq2seq.unrepresentable_smiles_characters`); in the three SMILES-output tasks
:func:`repair_unknowns` puts one back for each ``<unk>``. The authors' demo maps every ``<unk>`` to
``\\\\`` (the doubled form of the ChEBI-20 files); scilm writes the SMILES bond symbol ``\\``, and
``~`` where the ``<unk>`` joins two ions. A tokenizer that lacks none of them (``t5-tiny``) keeps
``<unk>``, which then is an invalid SMILES, counted. Text outputs keep ``<unk>`` visible.
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
    input_of,
    read_jsonl,
)
from scilm.errors import ScilmError
from scilm.inference.batching import length_sorted_batches
from scilm.models.seq2seq import load_trained_seq2seq, unrepresentable_smiles_characters
from scilm.io import check_output, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)

MAX_REPAIR_SLOTS = 6  # <unk>s in one output tried jointly; beyond, the preferred reading is kept
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


def _species(text: str, left: bool) -> str:
    """The molecule next to an ``<unk>``: after the last (``left``) or before the first ``.`` / ``>``."""
    for separator in ".>":
        text = text.rsplit(separator, 1)[-1] if left else text.split(separator, 1)[0]
    return text


def _is_ion(text: str) -> bool:
    from scilm.chem.smiles import to_mol

    mol = to_mol(text) if text else None
    return mol is not None and any(atom.GetFormalCharge() for atom in mol.GetAtoms())


def repair_unknowns(text: str, unk: str, missing: str) -> str:
    """``text`` (a generated SMILES) with each ``unk`` replaced by a character of ``missing``.

    ``missing`` is what the tokenizer cannot write (:func:`~scilm.models.seq2seq.unrepresentable_smiles_characters`,
    e.g. ``"\\~"``); when it is empty nothing is replaced (an ``<unk>`` from a full vocabulary is
    not a lost SMILES character). One missing character: every ``unk`` is it. Several: each
    ``unk`` is first read as ``~`` when ``~`` is missing and the molecules on both sides of it parse
    on their own and are both ions (Text+Chem writes salts as ``~``-joined ions, ``[Na+]~[OH-]``),
    else as ``\\`` when missing, else the first missing character. If that reading does not parse,
    the other readings are tried, fewest changes first (at most :data:`MAX_REPAIR_SLOTS` unknowns
    jointly), and the first that parses is returned; if none does, the first reading.
    """
    parts = text.split(unk)
    if len(parts) == 1 or not missing:
        return text
    preferred = []
    for left, right in zip(parts, parts[1:]):
        joins_ions = "~" in missing and _is_ion(_species(left, True)) and _is_ion(_species(right, False))
        preferred.append("~" if joins_ions else "\\" if "\\" in missing else missing[0])

    def join(choice) -> str:
        return parts[0] + "".join(c + part for c, part in zip(choice, parts[1:]))

    first = join(preferred)
    if len(missing) == 1 or len(preferred) > MAX_REPAIR_SLOTS:
        return first
    from itertools import product

    from scilm.chem.smiles import canonical_smiles

    options = [[p] + [c for c in missing if c != p] for p in preferred]
    readings = sorted(product(*[range(len(o)) for o in options]), key=lambda idx: sum(i > 0 for i in idx))
    for idx in readings:  # stable sort: fewest changes first, then slot order
        candidate = join([o[i] for o, i in zip(options, idx)])
        if canonical_smiles(candidate) is not None:
            return candidate
    return first


def decode(tokenizer, ids: list[int], smiles: bool) -> str:
    """One generated sequence as text: up to the first </s>, without padding; in SMILES, ``<unk>``
    repaired (:func:`repair_unknowns`) when the vocabulary lacks SMILES characters."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    ids = [i for i in ids if i != tokenizer.pad_token_id]
    # keep <unk> (skip_special_tokens would drop it) and never "clean up" spaces: SMILES are exact
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if smiles and tokenizer.unk_token and tokenizer.unk_token in text:
        text = repair_unknowns(text, tokenizer.unk_token, unrepresentable_smiles_characters(tokenizer))
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


def predict_candidates(net, tokenizer, examples: list[TextChemExample], num_beams: int, k: int, max_length: int,
                       batch_size: int) -> list[list[str]]:
    """The ``k`` best beam candidates per example, best first (its source as written, prompt included),
    one task at a time (SMILES tasks decode ``<unk>`` differently).

    With ``k == 1`` this is :func:`generate_from_sources`; asking for more candidates does not change
    the first (beam search ranks its finished hypotheses by the same score either way).
    """
    _check_decoding(num_beams, max_length, batch_size)
    if not 1 <= k <= num_beams:
        raise ScilmError(f"--top-k {k}: beam search returns at most --num-beams ({num_beams}) candidates")
    candidates: list[list[str]] = [[] for _ in examples]
    for task in dict.fromkeys(e.task or OTHER for e in examples):
        index = [i for i, e in enumerate(examples) if (e.task or OTHER) == task]
        outputs = generate_sequences(net, tokenizer, [examples[i].source for i in index], task in MOLECULE_TASKS,
                                     batch_size, k, num_beams=num_beams, max_new_tokens=max_length,
                                     do_sample=False)
        for i, output in zip(index, outputs):
            candidates[i] = output
    return candidates


def predict_examples(net, tokenizer, examples: list[TextChemExample], num_beams: int, max_length: int,
                     batch_size: int) -> list[str]:
    """A prediction per example (its source as written, prompt included), one task at a time."""
    return [c[0] for c in predict_candidates(net, tokenizer, examples, num_beams, 1, max_length, batch_size)]


def parse_top_k(text: str) -> tuple[int, ...]:
    """``"1,3,5,10"`` -> ``(1, 3, 5, 10)``: sorted, de-duplicated, each at least 1; ScilmError otherwise."""
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise ScilmError(f"--top-k {text!r}: expected comma-separated whole numbers such as 1,3,5,10") from None
    if not values or values[0] < 1:
        raise ScilmError(f"--top-k {text!r}: each k must be at least 1")
    return tuple(values)


def is_failure(task: str, output: str) -> bool:
    """An output the metrics cannot use: a SMILES that does not parse (molecule tasks), an empty text."""
    from scilm.chem.ranking import match_key

    return match_key(task, output) is None


def forward_round_trips(forward, examples: list[TextChemExample], candidates: list[list[str]], num_beams: int,
                        max_length: int, batch_size: int) -> dict[int, str | None]:
    """``{example index: the forward model's top-1 product}`` for every retrosynthesis example;
    None where the top-1 precursors do not parse (not sent to the forward model: a failure).

    The products feed round-trip accuracy as Schwaller et al. (Chem. Sci. 11, 3316, 2020) define it
    and Text+Chem (Christofidellis et al., ICML 2023) reports it: :mod:`scilm.chem.ranking`. The
    forward model decodes with the same beam width; its top-1 is compared.
    """
    from scilm.chem.smiles import canonical_smiles

    index = [i for i, e in enumerate(examples) if e.task == "retrosynthesis"]
    sendable = [i for i in index if canonical_smiles(candidates[i][0]) is not None]
    net, tokenizer = forward
    sources = [f"{PROMPTS['forward-prediction']} {candidates[i][0]}" for i in sendable]
    outputs = generate_from_sources(net, tokenizer, sources, True, num_beams, max_length, batch_size) if sources else []
    found: dict[int, str | None] = {i: None for i in index}
    found.update(zip(sendable, outputs))
    return found


def score_run(examples: list[TextChemExample], candidates: list[list[str]], ks: tuple[int, ...],
              products: dict[int, str | None] | None = None) -> tuple[dict, list[dict]]:
    """Per-task metrics and per-example rows of one generation run.

    ``candidates``: ranked beam outputs per example (``len >= max(ks)``); ``products``: forward
    top-1 per retrosynthesis example (:func:`forward_round_trips`) or None without a forward model.
    Every task gets ``n_examples``, ``n_failed`` (top-1 output unusable, :func:`is_failure`) and
    ``coverage`` (1 - n_failed / n_examples), the metrics of its top-1 outputs
    (:func:`scilm.chem.evaluate.evaluate_predictions`) and, except captions, ``top_k`` exact match
    (:mod:`scilm.chem.ranking`); retrosynthesis with ``products`` adds ``round_trip``. Examples
    with a reaction class (``scilm data textchem --keep-reaction-class``) add ``by_reaction_class``.
    """
    from scilm.chem.ranking import rank_of_target, round_trip_ok, top_k_accuracy

    predictions = [c[0] for c in candidates]
    tasks = evaluate_predictions(examples, predictions)
    rows = score_examples(examples, predictions)
    by_task: dict[str, list[int]] = {}
    for i, (example, row) in enumerate(zip(examples, rows)):
        task = row["task"]
        by_task.setdefault(task, []).append(i)
        row["failed"] = is_failure(task, predictions[i])
        row["candidates"] = candidates[i]
        if task in MOLECULE_TASKS:
            row["canonical_candidates"] = [canonical_smiles(c) for c in candidates[i]]
        if task != "smiles-to-caption":
            row["rank"] = rank_of_target(task, example.target, candidates[i])
        if example.reaction_class is not None:
            row["reaction_class"] = example.reaction_class
        if products is not None and task == "retrosynthesis":
            row["forward_product"] = products[i]
            row["round_trip"] = round_trip_ok(input_of(example), products[i])
    result = {}
    for task, index in by_task.items():
        metrics = dict(tasks[task])
        n = metrics.pop("n")
        n_failed = sum(rows[i]["failed"] for i in index)
        entry = {"n_examples": n, "n_failed": n_failed, "coverage": 1.0 - n_failed / n}
        if task != "smiles-to-caption":
            entry.update(top_k_accuracy([rows[i]["rank"] for i in index], ks))
        if products is not None and task == "retrosynthesis":
            entry["round_trip"] = sum(rows[i]["round_trip"] for i in index) / n
        entry.update(metrics)
        classes = sorted({rows[i]["reaction_class"] for i in index if "reaction_class" in rows[i]})
        if classes and task != "smiles-to-caption":
            entry["by_reaction_class"] = {
                str(c): {"n_examples": len(members), **top_k_accuracy([rows[i]["rank"] for i in members], ks)}
                for c in classes for members in [[i for i in index if rows[i].get("reaction_class") == c]]}
        result[task] = entry
    return result, rows


def respelled(examples: list[TextChemExample], n: int, seed: int) -> tuple[list[list[TextChemExample]], int]:
    """``n`` copies of the SMILES-input examples, the j-th with every input re-spelled the j-th way
    (:func:`scilm.chem.ranking.random_spellings`, seeded), and how many inputs did not parse (kept as
    written in every copy). Examples of other tasks are left out: their inputs have no spelling."""
    from dataclasses import replace

    from scilm.chem.ranking import SMILES_INPUT_TASKS, random_spellings

    chosen = [e for e in examples if e.task in SMILES_INPUT_TASKS]
    copies: list[list[TextChemExample]] = [[] for _ in range(n)]
    unparsed = 0
    for example in chosen:
        spellings = random_spellings(input_of(example), n, seed)
        if spellings is None:
            unparsed += 1
            spellings = [input_of(example)] * n
        for j, text in enumerate(spellings):
            copies[j].append(replace(example, source=f"{PROMPTS[example.task]} {text}"))
    return copies, unparsed


def spread_of_runs(runs: list[dict]) -> dict:
    """``{task: {metric: {mean, sd, min, max}}}`` over runs (dicts of :func:`score_run`'s first value),
    for every float metric present (a metric that is None in some run is left out)."""
    from scilm.chem.ranking import spread

    result = {}
    for task in runs[0]:
        names = [k for k, v in runs[0][task].items() if isinstance(v, float)
                 and all(isinstance(run[task].get(k), float) for run in runs)]
        result[task] = {name: spread([run[task][name] for run in runs]) for name in names}
    return result


def _print_metrics(tasks: dict) -> None:
    for task, values in tasks.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items()
                          if isinstance(v, float) and not k.endswith("valid_only"))
        print(f"{task} (n={values['n_examples']}, failed {values['n_failed']}): {shown}")


def evaluate_command(model: str, data: Path, out: Path, predictions: Path | None, num_beams: int,
                     max_length: int, batch_size: int, top_k: tuple[int, ...] = (1,),
                     forward_model: str | None = None, randomize_inputs: int = 0, seed: int = 0) -> dict[str, Any]:
    """``scilm evaluate``: generate for every example, score per task, write metrics and predictions.

    ``top_k``: the k of the top-k exact match (beam search returns ``max(top_k)`` candidates, at most
    ``num_beams``); ``forward_model``: a model directory whose forward-prediction top-1 checks each
    retrosynthesis top-1 (round trip; it may be ``model`` itself); ``randomize_inputs``: N >= 2
    re-spellings of every SMILES input, scored again, reported as each metric's spread (``seed``
    picks them). Every example is scored and has a row in the predictions file; the re-spelled
    runs' rows go to ``<predictions>.respelled.jsonl``. Raises ScilmError on a bad setting before
    any model loads.
    """
    _check_decoding(num_beams, max_length, batch_size)
    top_k = tuple(sorted(set(top_k)))
    if not top_k or top_k[0] < 1:
        raise ScilmError("--top-k: each k must be at least 1")
    if top_k[-1] > num_beams:
        raise ScilmError(f"--top-k {top_k[-1]}: beam search returns at most --num-beams ({num_beams}) candidates; "
                         f"raise --num-beams to {top_k[-1]} or more")
    if randomize_inputs == 1 or randomize_inputs < 0:
        raise ScilmError(f"--randomize-inputs {randomize_inputs}: a spread needs at least 2 re-spellings (or 0: off)")
    out = check_output(Path(out), [data])
    predictions = Path(predictions) if predictions else out.with_name(f"{out.stem}.predictions.jsonl")
    check_output(predictions, [data, out], option="--predictions")
    respelled_path = predictions.with_name(f"{predictions.stem}.respelled.jsonl")
    if randomize_inputs:
        check_output(respelled_path, [data, out, predictions], option="--predictions")
    examples = read_jsonl(data, require_task=False)
    unknown = sum(e.task is None for e in examples)
    if unknown:
        log.warning("%s: %d example(s) start with none of the five prompts; scored as %r (BLEU-2, exact match)",
                    data, unknown, OTHER)
    net, tokenizer = load_seq2seq(model)
    forward = None
    if forward_model is not None:
        same = Path(forward_model).expanduser().resolve() == Path(model).expanduser().resolve()
        forward = (net, tokenizer) if same else load_seq2seq(forward_model)

    def run(part: list[TextChemExample]) -> tuple[dict, list[dict]]:
        candidates = predict_candidates(net, tokenizer, part, num_beams, top_k[-1], max_length, batch_size)
        products = (forward_round_trips(forward, part, candidates, num_beams, max_length, batch_size)
                    if forward is not None else None)
        return score_run(part, candidates, top_k, products)

    started = time.perf_counter()
    tasks, rows = run(examples)
    runtime = time.perf_counter() - started
    metrics = {"model": str(model), "data": str(data), "n": len(examples), "num_beams": num_beams,
               "top_k": list(top_k), "max_length": max_length, "forward_model": forward_model,
               "generation_seconds": runtime, "predictions": str(predictions), "tasks": tasks}
    respelled_rows = []
    if randomize_inputs:
        copies, unparsed = respelled(examples, randomize_inputs, seed)
        runs = []
        for j, part in enumerate(copies):
            if not part:
                break
            found, part_rows = run(part)
            runs.append(found)
            respelled_rows += [{"spelling": j, **row} for row in part_rows]
        metrics["robustness"] = {
            "n_spellings": randomize_inputs, "seed": seed, "n_inputs_not_parsed": unparsed,
            "method": "RDKit MolToRandomSmilesVect (doRandom writer), each molecule re-spelled; spread over spellings "
                      "(sd: sample, n-1)",
            "predictions": str(respelled_path) if runs else None,
            "tasks": spread_of_runs(runs) if runs else {}}
    write_jsonl_atomic(predictions, rows, [data])
    if respelled_rows:
        write_jsonl_atomic(respelled_path, respelled_rows, [data])
    write_json_atomic(out, metrics)
    _print_metrics(tasks)
    if metrics.get("robustness", {}).get("tasks"):
        for task, values in metrics["robustness"]["tasks"].items():
            shown = ", ".join(f"{k} {v['mean']:.3f}±{v['sd']:.3f}" for k, v in values.items()
                              if k.startswith("top_") or k in ("round_trip", "rouge2", "bleu2"))
            print(f"{task} over {randomize_inputs} spellings: {shown}")
    print(f"wrote {out} and {predictions}")
    return metrics
