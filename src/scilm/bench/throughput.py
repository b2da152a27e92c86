"""``scilm bench throughput``: ``scilm train`` against the published recipe, useful tokens/s and accuracy (issue 16).

Two rows, each run in its own Python process on the same data, model and hyperparameters:

* ``published-recipe``: :mod:`scilm.bench.published_recipe`, the Hugging Face Trainer script of the
  original tutorial as its users write it (transformers' default attention, ``DataCollatorWithPadding``,
  random order, class-weighted cross-entropy in a Trainer subclass, batch 8, lr 1e-4, one epoch, fp32);
* ``scilm-train``: ``scilm train --task membrane`` (its code, from a YAML config kept beside the results)
  with batch 8, lr 1e-4, one epoch, ``class_weights`` on and everything else at scilm's defaults: batches
  of similar length (``group_by_length``), PyTorch's SDPA attention (transformers' default too, so no
  difference there), warm-up over 10 % of the steps and weight decay 0.01 (the Trainer's defaults, which
  the recipe keeps, are no warm-up and no weight decay), the loss ``sum_i w_i CE_i / N`` of
  :mod:`scilm.training.losses` (the recipe's is ``sum_i w_i CE_i / sum_i w_i`` per batch).

Data: the bundled DeepLoc-1 membrane/soluble files (the proteins with a membrane label; 'U' skipped),
written once as FASTA for scilm and as the recipe's CSV (``Sequence``, ``Membrane``), every sequence cut
to the same ``truncate`` residues for both rows (512 by default: the recipe's cut; the recipe's tokenizer
truncates at ``truncate + 2`` tokens, scilm's ``--truncate`` cuts residues: the same token ids). Both rows
load the same starting weights from the same directory.

Each row trains twice, because no model here is both a realistic shape and learnable in one epoch on a
CPU:

* **speed** on the ``--model`` shape (``esm2-8m`` by default, random weights built offline and saved
  once): useful tokens/s, the process's wall time and peak RSS, and its validation accuracy (from
  random weights one epoch learns little more than amino-acid composition, so this accuracy is a
  sanity check, not the comparison). ``--train-proteins N`` trains these runs on N training proteins
  (a seeded random sample, each class in its file share) to fit a time budget: the length distribution,
  hence the padding of random batches, is kept; scilm's length grouping then works within smaller
  mega-batches (the Trainer's ``LengthGroupedSampler``: ``min(N // 32, 50)`` batches each), which only
  makes its figure conservative;
* **accuracy** from ``esm2-tiny-mlm``, the tiny ESM-2 that ``scilm pretrain`` pre-trained on the bundled
  training sequences (the recipe fine-tunes a pre-trained model), on the whole training file: validation
  accuracy after the epoch says whether scilm's speed costs any answer quality.

Measurement, identical for both rows (:class:`TrainingMeter`, global PyTorch hooks installed by the
bench around the row's code, which neither row knows about):

* useful tokens = the non-padding tokens of one epoch, each sequence's residues after the cut plus its
  ``<cls>`` and ``<eos>``: :func:`useful_tokens`, counted from the data. The meter also counts, in every
  training forward pass, the token ids that are not padding (must equal the data's count: each row saw
  exactly one epoch of the same data) and all token ids including padding (``computed_tokens``);
* the training clock runs from the first training forward pass to the end of the last optimizer step:
  every forward, backward and optimizer step, the learning-rate schedule, the Trainer's per-step
  callbacks and logging, and the loading and collation of every batch but the first. It excludes
  process start-up, imports, model loading, tokenization, building the Trainer, the validation after
  the epoch (a validation pass inside the window is an error) and saving the model;
* useful tokens/s = useful tokens / training clock; ``process_seconds`` is the child process's whole
  wall time; peak RSS is the child's ``ru_maxrss``; the 1-minute load average before and after each
  run is recorded (the machine may be shared);
* validation accuracy is each run's own, over the same whole validation set: the fraction of proteins
  whose argmax class is the true one (the recipe's ``compute_metrics``; scilm's scikit-learn
  ``accuracy_score``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from scilm.bench.report import machine_name, markdown_table
from scilm.bench.runner import BUNDLED, write_fasta
from scilm.data.protein import ProteinRecord, read_proteins
from scilm.errors import ScilmError
from scilm.io import write_json_atomic, write_text_atomic

RECIPE = "published-recipe"
SCILM = "scilm-train"
ROWS = (RECIPE, SCILM)
ABLATION = "scilm-train-full-last-layer"  # scilm-train without the <cls>-only last layer (models/cls_only.py)
MODELS = ("esm2-8m", "esm2-35m")
SPECIAL_TOKENS = 2  # <cls> and <eos> around every ESM-2 sequence


@dataclass(frozen=True)
class ThroughputSettings:
    """What both rows train on and with; ``quick`` is a smoke run of a few minutes on 2 CPU cores.

    The speed runs (``--model`` shape) may train on a seeded sample of ``speed_train`` training proteins to
    fit a time budget; the accuracy runs (``warm_model``) train on ``accuracy_train`` proteins. Both
    validate on ``valid`` proteins. None means the whole bundled file.
    """

    truncate: int  # residues kept per sequence
    speed_train: int | None
    accuracy_train: int | None
    valid: int | None
    batch_size: int = 8
    lr: float = 1e-4
    epochs: float = 1.0
    seed: int = 0
    warm_model: str = "esm2-tiny-mlm"  # the pre-trained model of the accuracy runs
    threads: int | None = None  # torch threads of both rows (None: PyTorch's default, one per core)
    ablation: bool = True  # also time scilm-train with the classifier's last layer in full (speed data only)

    @classmethod
    def for_mode(cls, quick: bool, truncate: int | None = None, speed_train: int | None = None,
                 threads: int | None = None) -> "ThroughputSettings":
        """The settings of a ``quick`` run (speed: 64 training proteins; accuracy: 160; 48 validation proteins;
        256 residues) or a full one (both bundled files whole, 512 residues: the published recipe's cut); the
        arguments override them."""
        if quick:
            return cls(truncate=truncate or 256, speed_train=speed_train or 64, accuracy_train=160, valid=48,
                       threads=threads)
        return cls(truncate=truncate or 512, speed_train=speed_train, accuracy_train=None, valid=None, threads=threads)


def useful_tokens(sequences: list[str], truncate: int) -> int:
    """Non-padding tokens of one pass over ``sequences``: ``min(len, truncate)`` residues plus <cls> and <eos>
    each (ESM-2's tokenizer has one token per residue)."""
    return sum(min(len(s), truncate) + SPECIAL_TOKENS for s in sequences)


class TrainingMeter:
    """Counts the tokens training forward passes see and clocks training, from outside any trainer.

    Two global PyTorch hooks: a forward pre-hook that fires on the model's token embedding (an
    ``nn.Embedding`` of ``vocab_size`` rows, input ids (B, T)) and an optimizer step post-hook. In
    training mode each batch adds its ids other than ``pad_id`` to ``useful_tokens`` and all of them to
    ``computed_tokens``; the clock runs from the first training forward to the end of the last
    optimizer step, in wall time and in the process's CPU time (``time.process_time``: with one torch
    thread, the compute the row got, however other jobs on the machine took turns). Evaluation forwards (eval mode) are only timed, to tell whether one fell inside the
    clock's window. Use as a context manager (installs, then removes the hooks).
    """

    def __init__(self, vocab_size: int, pad_id: int):
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.useful_tokens = self.computed_tokens = self.batches = self.steps = 0
        self.first_forward: float | None = None
        self.last_step: float | None = None
        self.cpu_first = self.cpu_last = 0.0
        self.eval_forwards: list[float] = []
        self._handles: list = []

    def __enter__(self) -> "TrainingMeter":
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [register_module_forward_pre_hook(self._forward),
                         register_optimizer_step_post_hook(self._step)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward(self, module, args) -> None:
        if type(module) is not torch.nn.Embedding or module.num_embeddings != self.vocab_size or not args:
            return
        now = time.perf_counter()
        if not module.training:
            self.eval_forwards.append(now)
            return
        if self.first_forward is None:
            self.first_forward, self.cpu_first = now, time.process_time()
        ids = args[0]
        self.useful_tokens += int(ids.ne(self.pad_id).sum())
        self.computed_tokens += ids.numel()
        self.batches += 1

    def _step(self, optimizer, args, kwargs) -> None:
        self.last_step, self.cpu_last = time.perf_counter(), time.process_time()
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        """Counts, ``train_seconds`` (first training forward -> end of the last optimizer step) and how many
        evaluation forwards fell inside that window."""
        if self.first_forward is None or self.last_step is None:
            raise ScilmError("the bench's meter saw no training step (was the model an ESM-2?)")
        inside = sum(self.first_forward <= t <= self.last_step for t in self.eval_forwards)
        return {"meter_useful_tokens": self.useful_tokens, "computed_tokens": self.computed_tokens,
                "train_batches": self.batches, "optimizer_steps": self.steps,
                "train_seconds": self.last_step - self.first_forward, "train_cpu_seconds": self.cpu_last - self.cpu_first,
                "eval_forwards_in_window": inside}


# -- data and models ----------------------------------------------------------------------------------

def bench_records(path: Path, n: int | None, seed: int = 0) -> list[ProteinRecord]:
    """The membrane/soluble records of a bundled file, in file order; with ``n``, a seeded random sample of about
    ``n`` of them, each class in its share of the file (at least one of each). A random sample keeps the
    file's length distribution, hence the padding of random batches (the file's first proteins are shorter)."""
    import numpy as np

    records = read_proteins(path, task="membrane")
    if n is None or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in ("membrane", "soluble"):
        of_label = [i for i, r in enumerate(records) if r.label == label]
        take = max(1, round(n * len(of_label) / len(records)))
        chosen += rng.choice(of_label, size=min(take, len(of_label)), replace=False).tolist()
    return [records[i] for i in sorted(chosen)]


def majority_share(train: list[ProteinRecord], valid: list[ProteinRecord]) -> float:
    """Validation accuracy of always answering the training set's most frequent label."""
    labels = [r.label for r in train]
    majority = max(sorted(set(labels)), key=labels.count)
    return sum(r.label == majority for r in valid) / len(valid)


def write_csv(path: Path, records: list[ProteinRecord]) -> Path:
    """The records as the recipe's CSV: ``id``, ``Sequence``, ``Membrane`` (1 membrane, 0 soluble)."""
    import pandas as pd

    frame = pd.DataFrame({"id": [r.id for r in records], "Sequence": [r.sequence for r in records],
                          "Membrane": [int(r.label == "membrane") for r in records]})
    frame.to_csv(path, index=False)
    return path


def shape_model(preset: str, directory: Path, seed: int) -> Path:
    """An ESM-2 masked LM of ``preset``'s shape with seeded random weights, saved (hub names) with its
    tokenizer into ``directory``: the starting weights both rows load."""
    from transformers import EsmForMaskedLM

    from scilm.io import replace_dir_atomic
    from scilm.models.protein import esm2_config, esm2_tokenizer
    from scilm.models.saving import save_model

    if (directory / "config.json").is_file():  # written whole by an earlier run (moved in at the end)
        return directory
    torch.manual_seed(seed)
    partial = directory.with_name(directory.name + ".partial")
    save_model(EsmForMaskedLM(esm2_config(preset)), partial)
    esm2_tokenizer().save_pretrained(str(partial))
    replace_dir_atomic(partial, directory)
    return directory


# -- one run in its own process ----------------------------------------------------------------------------

def _child(args: dict[str, Any]) -> None:
    """Run one row's training under the meter, then write the measurements to ``args['result']``."""
    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    if args.get("ablation") == "full-last-layer":  # the same training, the last layer computed everywhere
        import contextlib

        from scilm.training import trainer

        trainer.cls_only_last_layer = contextlib.nullcontext
    with TrainingMeter(args["vocab_size"], args["pad_id"]) as meter:
        if args["row"] == RECIPE:
            from scilm.bench import published_recipe

            metrics = published_recipe.run(**args["recipe"])
        else:
            from scilm.training import load_config, train

            metrics = train(load_config(args["config"], {}))
    result = {**meter.summary(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "eval_accuracy": metrics["eval_accuracy"], "global_step": metrics["global_step"],
              "n_train": metrics["n_train"], "n_eval": metrics["n_eval"]}
    write_json_atomic(Path(args["result"]), result)


def run_row(row: str, model_dir: Path, work: Path, data: dict[str, Path], settings: ThroughputSettings,
            isolate: bool = True, full_last_layer: bool = False) -> dict[str, Any]:
    """Train ``row`` from ``model_dir`` in a fresh Python process (``isolate``; in-process for tests) and return
    its measurements (:meth:`TrainingMeter.summary`, accuracy, ``process_seconds``, ``peak_rss_mb``, load
    averages); ``full_last_layer``: scilm-train without its <cls>-only last layer (:data:`ABLATION`).
    Raises ScilmError (naming the log file) when the run fails."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {"row": row, "result": str(work / "result.json"), "vocab_size": 33, "pad_id": 1,
                            "threads": settings.threads, "ablation": "full-last-layer" if full_last_layer else None}
    if row == RECIPE:
        args["recipe"] = {"train_csv": str(data["train_csv"]), "valid_csv": str(data["valid_csv"]),
                          "model_dir": str(model_dir), "out": str(work / "run"), "max_residues": settings.truncate,
                          "batch_size": settings.batch_size, "lr": settings.lr, "epochs": settings.epochs,
                          "seed": settings.seed}
    else:
        config = {"task": "membrane", "data": str(data["train_fasta"]), "valid": str(data["valid_fasta"]),
                  "model": str(model_dir), "out": str(work / "run"), "overwrite": True, "progress": False,
                  "batch_size": settings.batch_size, "lr": settings.lr, "epochs": settings.epochs,
                  "truncate": settings.truncate, "class_weights": True, "seed": settings.seed}
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        args["config"] = str(work / "config.yaml")  # `scilm train --config` re-runs this row alone
    (work / "args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
    (work / "result.json").unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if isolate:
        proc = subprocess.run([sys.executable, "-m", "scilm.bench.throughput", str(work / "args.json")],
                              capture_output=True, text=True)
        (work / "log.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode != 0 or not (work / "result.json").is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ScilmError(f"bench row {row} failed: {tail} (log: {work / 'log.txt'})")
    else:
        _child(args)
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    result.update(process_seconds=time.perf_counter() - started, load_before=load_before,
                  load_after=os.getloadavg()[0])
    return result


def _checked(row: str, result: dict[str, Any], tokens: int, n_train: int, n_valid: int) -> dict[str, Any]:
    """``result`` if the run trained exactly one epoch of the bench's data and was clocked cleanly, else ScilmError."""
    problems = []
    if result["meter_useful_tokens"] != tokens:
        problems.append(f"its training forwards saw {result['meter_useful_tokens']:,} non-padding tokens, one epoch "
                        f"of the data holds {tokens:,}")
    if (result["n_train"], result["n_eval"]) != (n_train, n_valid):
        problems.append(f"it read {result['n_train']} training / {result['n_eval']} validation proteins, the bench "
                        f"wrote {n_train} / {n_valid}")
    if result["eval_forwards_in_window"]:
        problems.append(f"{result['eval_forwards_in_window']} validation batch(es) ran inside the training clock")
    if problems:
        raise ScilmError(f"bench row {row}: " + "; ".join(problems))
    return result


# -- the bench ------------------------------------------------------------------------------------------

def run_throughput_bench(out: str | Path, model: str = "esm2-8m", quick: bool = False,
                         settings: ThroughputSettings | None = None, command: str = "scilm bench throughput",
                         isolate: bool = True) -> str:
    """Both rows on ``model``'s shape (speed) and on the pre-trained warm model (accuracy); writes
    ``results.json``, ``table.md`` and ``throughput.png`` into ``out`` and returns the table.

    Raises ScilmError for an unknown ``model`` preset or a row that fails its checks (:func:`_checked`).
    """
    from scilm.models.protein import PROTEIN_PRESETS, resolve_source

    if model not in PROTEIN_PRESETS:
        raise ScilmError(f"--model must be one of {', '.join(MODELS)} (got {model!r})")
    settings = settings or ThroughputSettings.for_mode(quick)
    out = Path(out)
    valid = bench_records(BUNDLED / "valid.fasta", settings.valid, settings.seed)
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    sets: dict[str, dict[str, Any]] = {}
    for kind, n_train, model_dir in (("speed", settings.speed_train, None), ("accuracy", settings.accuracy_train,
                                                                           Path(resolve_source(settings.warm_model)))):
        train = bench_records(BUNDLED / "train.fasta", n_train, settings.seed)
        folder = out / "data" / kind
        folder.mkdir(parents=True, exist_ok=True)
        data = {"train_fasta": write_fasta(folder / "train.fasta", train),
                "valid_fasta": write_fasta(folder / "valid.fasta", valid),
                "train_csv": write_csv(folder / "train.csv", train), "valid_csv": write_csv(folder / "valid.csv", valid)}
        tokens = useful_tokens([r.sequence for r in train], settings.truncate)
        sets[kind] = {"n_train": len(train), "useful_tokens": tokens, "baseline": majority_share(train, valid)}
        model_dir = model_dir or shape_model(model, out / "models" / model, settings.seed)
        for row in ROWS:
            result = run_row(row, model_dir, out / "runs" / f"{kind}-{row}", data, settings, isolate)
            runs[kind, row] = _checked(row, result, tokens, len(train), len(valid))
        if kind == "speed" and settings.ablation:
            result = run_row(SCILM, model_dir, out / "runs" / f"speed-{ABLATION}", data, settings, isolate,
                             full_last_layer=True)
            runs[kind, ABLATION] = _checked(ABLATION, result, tokens, len(train), len(valid))
    rows = []
    base = runs["speed", RECIPE]
    for row in ROWS:
        speed, accuracy = runs["speed", row], runs["accuracy", row]
        tokens, warm_tokens = sets["speed"]["useful_tokens"], sets["accuracy"]["useful_tokens"]
        rows.append({
            "row": row, "model": model, "useful_tokens": tokens, "computed_tokens": speed["computed_tokens"],
            "computed_per_useful": speed["computed_tokens"] / tokens, "train_seconds": speed["train_seconds"],
            "useful_tokens_per_s": tokens / speed["train_seconds"],
            "speedup": base["train_seconds"] / speed["train_seconds"],
            "train_cpu_seconds": speed["train_cpu_seconds"],
            "speedup_cpu": base["train_cpu_seconds"] / speed["train_cpu_seconds"],
            "process_seconds": speed["process_seconds"], "peak_rss_mb": speed["peak_rss_mb"],
            "optimizer_steps": speed["optimizer_steps"], "eval_accuracy": speed["eval_accuracy"],
            "load_average": [speed["load_before"], speed["load_after"]],
            "warm_model": settings.warm_model, "warm_eval_accuracy": accuracy["eval_accuracy"],
            "warm_useful_tokens": warm_tokens, "warm_useful_tokens_per_s": warm_tokens / accuracy["train_seconds"],
            "warm_computed_per_useful": accuracy["computed_tokens"] / warm_tokens,
        })
    for r in rows:
        r["accuracy_vs_recipe_points"] = 100 * (r["eval_accuracy"] - rows[0]["eval_accuracy"])
        r["warm_accuracy_vs_recipe_points"] = 100 * (r["warm_eval_accuracy"] - rows[0]["warm_eval_accuracy"])
    ablation = None
    if ("speed", ABLATION) in runs:
        full, cls = runs["speed", ABLATION], runs["speed", SCILM]
        ablation = {"row": ABLATION, "train_seconds": full["train_seconds"],
                    "train_cpu_seconds": full["train_cpu_seconds"],
                    "useful_tokens_per_s": sets["speed"]["useful_tokens"] / full["train_seconds"],
                    "eval_accuracy": full["eval_accuracy"],
                    "cls_only_speedup": full["train_seconds"] / cls["train_seconds"],
                    "cls_only_speedup_cpu": full["train_cpu_seconds"] / cls["train_cpu_seconds"],
                    "load_average": [full["load_before"], full["load_after"]]}
    return write_outputs(out, rows, settings, command, quick, speed_train=sets["speed"]["n_train"],
                         accuracy_train=sets["accuracy"]["n_train"], n_valid=len(valid),
                         baseline=sets["accuracy"]["baseline"], ablation=ablation)


def verdict(rows: list[dict[str, Any]], target: float = 1.6, points: float = 1.0) -> str:
    """One sentence: does ``scilm-train`` reach ``target`` x the recipe's useful tokens/s, by the wall clock and by
    CPU time both (so that other jobs slowing one row cannot make the target), with the pre-trained model's
    accuracy within ``points`` of the recipe's? (The random-init accuracy is a sanity check, not judged.)"""
    scilm = next(r for r in rows if r["row"] == SCILM)
    fast = min(scilm["speedup"], scilm["speedup_cpu"]) >= target
    close = abs(scilm["warm_accuracy_vs_recipe_points"]) <= points
    return (f"scilm-train: {scilm['speedup']:.2f}x the published recipe's useful tokens/s by the wall clock, "
            f"{scilm['speedup_cpu']:.2f}x by CPU time (target >= {target:g}x both: "
            f"{'met' if fast else '**not met**'}); accuracy from {scilm['warm_model']} "
            f"{scilm['warm_accuracy_vs_recipe_points']:+.1f} points against the recipe's "
            f"(within {points:g}: {'yes' if close else '**no**'}).")


def ablation_sentence(ablation: dict[str, Any], scilm: dict[str, Any]) -> str:
    """What the <cls>-only last layer is worth in this run: scilm-train against the same training with the
    last layer in full (same process setup, same data), and whether their random-init accuracies agree."""
    same = abs(ablation["eval_accuracy"] - scilm["eval_accuracy"]) < 1e-9
    return (f"Ablation, same run: {ABLATION} (scilm-train with the classifier's last layer computed at every "
            f"position) {ablation['useful_tokens_per_s']:,.0f} useful tokens/s, {ablation['train_seconds']:.1f} s; "
            f"the <cls>-only last layer makes scilm-train {ablation['cls_only_speedup']:.2f}x faster "
            f"({ablation['cls_only_speedup_cpu']:.2f}x by CPU time), accuracy after the epoch "
            f"{ablation['eval_accuracy']:.4f} vs {scilm['eval_accuracy']:.4f} "
            f"({'the same' if same else '**different**'}).")


def write_outputs(out: Path, rows: list[dict[str, Any]], settings: ThroughputSettings, command: str, quick: bool,
                  speed_train: int, accuracy_train: int, n_valid: int, baseline: float,
                  ablation: dict[str, Any] | None = None) -> str:
    """``results.json`` (settings, rows, ablation), ``table.md`` (machine, command, what was measured, the table,
    the verdict, the ablation) and ``throughput.png``; returns the table.md text."""
    model, warm = rows[0]["model"], rows[0]["warm_model"]
    header = ["row", "useful tokens/s", "x published-recipe", "x by CPU time", "tokens computed / useful",
              "training clock (s)",
              "process wall (s)", "peak RSS (MB)", f"accuracy, {model} random init", f"accuracy, {warm}",
              "Δ accuracy (points)"]
    table_rows = [[r["row"], f"{r['useful_tokens_per_s']:,.0f}", f"{r['speedup']:.2f}", f"{r['speedup_cpu']:.2f}",
                   f"{r['computed_per_useful']:.3f}", f"{r['train_seconds']:.1f}", f"{r['process_seconds']:.1f}",
                   f"{r['peak_rss_mb']:,.0f}", f"{r['eval_accuracy']:.3f}", f"{r['warm_eval_accuracy']:.3f}",
                   f"{r['accuracy_vs_recipe_points']:+.1f} / {r['warm_accuracy_vs_recipe_points']:+.1f}"]
                  for r in rows]
    loads = ", ".join(f"{r['row']} {r['load_average'][0]:.2f} -> {r['load_average'][1]:.2f}" for r in rows)
    text = "\n".join([
        f"Machine: {machine_name()}.", f"Command: `{command}`.", "",
        f"Both rows: batch {settings.batch_size}, lr {settings.lr:g}, {settings.epochs:g} epoch, fp32, "
        f"{settings.threads or 'default (one per core)'} torch thread(s), DeepLoc-1 membrane/soluble (bundled), every "
        f"sequence cut to {settings.truncate} residues. Speed: {model} shape, random weights (the same saved weights "
        f"for both rows), {speed_train:,} training proteins: {rows[0]['useful_tokens']:,} useful tokens (residues + "
        "<cls> + <eos>, no padding; counted from the data and checked against what each row's training forwards "
        "saw). Training clock: first training forward to the end of the last optimizer step (model loading, "
        "tokenization and validation excluded); x by CPU time: the same ratio from the process's CPU time in that "
        "window (robust to other jobs taking turns on the cores); process wall: the whole child process; tokens "
        "computed / useful: the padding overhead of the row's batches. Accuracy: validation accuracy (argmax) on "
        f"{n_valid:,} validation proteins after the epoch, of a run of each row from {warm} (pre-trained) on "
        f"{accuracy_train:,} training proteins, and of the {model} run (random init: a sanity check; always "
        f"answering the training majority class scores {baseline:.3f}). 1-minute load average before -> after "
        f"the speed runs: {loads}.", "",
        markdown_table(header, table_rows), "", verdict(rows), "",
        *([ablation_sentence(ablation, next(r for r in rows if r["row"] == SCILM)), ""] if ablation else [])])
    write_json_atomic(out / "results.json", {"machine": machine_name(), "command": command, "quick": quick,
                                             "settings": asdict(settings), "speed_train": speed_train,
                                             "accuracy_train": accuracy_train, "n_valid": n_valid,
                                             "majority_baseline": baseline, "rows": rows, "ablation": ablation})
    write_text_atomic(out / "table.md", text)
    _chart(out / "throughput.png", rows)
    return text


def _chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"] for r in rows]
    colors = ["#777" if r["row"] == RECIPE else "#3b7dd8" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    speeds = [r["useful_tokens_per_s"] for r in rows]
    axes[0].bar(names, speeds, color=colors)
    axes[0].set_title(f"useful tokens / s, {rows[0]['model']} (training clock)")
    for i, (v, r) in enumerate(zip(speeds, rows)):
        axes[0].text(i, v, f"{v:,.0f} ({r['speedup']:.2f}x)", ha="center", va="bottom", fontsize=8)
    width = 0.38
    for j, (key, label) in enumerate((("eval_accuracy", f"{rows[0]['model']} (random init)"),
                                      ("warm_eval_accuracy", f"{rows[0]['warm_model']} (pre-trained)"))):
        values = [r[key] for r in rows]
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        axes[1].bar(xs, values, width, label=label, color=["#9bbbe8", "#3b7dd8"][j])
        for x, v in zip(xs, values):
            axes[1].text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    axes[1].set_xticks(range(len(rows)), names)
    axes[1].set_ylim(0.0, 1.0)
    axes[1].set_title("validation accuracy after the epoch")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    _child(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
