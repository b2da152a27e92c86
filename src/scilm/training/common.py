"""Pieces every training recipe shares: precision, Trainer arguments, run output, versions."""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from scilm.data.textio import read_json
from scilm.errors import ScilmError, name
from scilm.io import replace_dir_atomic, write_json_atomic  # noqa: F401 (re-exported)
from scilm.training import checkpoints, rundir
from scilm.distributed import is_main_process, world_size

log = logging.getLogger(__name__)

RUN_FILES = ("metrics.json", "model")  # a new run refuses to replace these without --overwrite
FINISHED = "metrics.json"  # written last: its presence alone marks a finished run


def resolve_precision(precision: str, fp16_safe: bool = True) -> str:
    """``auto`` -> bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU.

    ``fp16_safe=False`` (T5: its feed-forward activations exceed fp16's 65504 and give inf/NaN,
    huggingface/transformers#4586, #5651, #14189; T5 itself was trained with bfloat16 activations,
    google-research/text-to-text-transfer-transformer#539): ``auto`` never picks fp16 (fp32 on an
    older GPU) and an explicit ``fp16`` raises ScilmError: a run that can only produce NaN is refused.
    """
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not fp16_safe:
        raise ScilmError(f"{name('precision')} fp16: T5 overflows in fp16 (inf/NaN losses, a known T5 problem); "
                         f"use bf16 on a GPU that has it, or fp32 ({name('precision')} auto picks between them)")
    if precision == "auto":
        if not cuda:
            return "fp32"
        if torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if fp16_safe else "fp32"
    if precision == "fp16" and not cuda:
        raise ScilmError("--precision fp16 needs a CUDA GPU; on CPU use fp32 (or auto)")
    if precision == "bf16" and not cuda:
        warnings.warn("bf16 on a CPU without bf16 units is far slower than fp32", stacklevel=2)
    return precision


def check_out_dir(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Read-only check of ``out`` against the run's intent (a new run, ``overwrite`` or ``resume``).

    Called before any work so a wrong ``--out`` fails at once; writes nothing. ``out`` must be new,
    empty, or a scilm run directory (:mod:`scilm.training.rundir`); a non-empty directory scilm did
    not create needs ``overwrite``. A finished run is replaced only with ``overwrite``, an
    unfinished one continues only with ``resume``. Raises ScilmError naming the problem.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScilmError(f"--out {out}: exists and is not a directory")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if resume and (out / FINISHED).exists():
        raise ScilmError(f"--out {out}: the run there is finished ({FINISHED}); there is nothing to resume")
    if present and not resume and not overwrite:
        raise ScilmError(f"--out {out}: already holds a finished run ({', '.join(present)}); "
                         "pass --overwrite to replace it or choose another --out")
    root = out / "checkpoints"
    latest = checkpoints.latest_complete(root)
    if resume and latest is None:
        raise ScilmError(f"--resume: no complete checkpoint in {root}; nothing to resume")
    if not resume and not overwrite and latest is not None:
        raise ScilmError(f"--out {out}: holds an unfinished run (checkpoint at step {checkpoints.checkpoint_step(latest)}); "
                         "pass --resume to continue it or --overwrite to start over")
    # a resumable run written before scilm marked its directories is adopted by its checkpoints
    rundir.check_claim(out, overwrite or (resume and latest is not None))
    return out


def prepare_out_dir(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """:func:`check_out_dir`, then make ``out`` this run's: created, marked, locked, cleaned.

    Call it once the inputs are read and the model is built (bad input writes nothing). Rank 0
    alone claims, locks and deletes: its own old checkpoints on ``overwrite``, its own half-written
    ones always; nothing scilm did not create. Raises ScilmError (also when another run holds
    the directory, or it cannot be written).
    """
    out = check_out_dir(out, overwrite, resume)
    root = out / "checkpoints"
    if is_main_process():
        rundir.claim(out, overwrite or (resume and checkpoints.latest_complete(root) is not None))
        rundir.acquire_lock(out)
        with rundir.writing("cannot update the run directory"):
            if overwrite:  # the old result stops counting as finished; model/ is replaced only at the end
                (out / FINISHED).unlink(missing_ok=True)
                checkpoints.remove_all_owned(root)
            checkpoints.remove_incomplete(root)
    return out


def training_arguments(config, output_dir: Path, precision: str, **extra: Any) -> TrainingArguments:
    """The Hugging Face TrainingArguments for ``config``: one place maps our flags to theirs.

    ``extra`` adds or overrides arguments (e.g. ``max_steps`` for a loader without a length).
    """
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=getattr(config, "eval_batch_size", 32),
        gradient_accumulation_steps=config.grad_accum,
        activation_checkpointing=config.grad_checkpointing,
        # non-reentrant checkpointing works with frozen inputs (LoRA) and is the PyTorch default
        activation_checkpointing_kwargs={"use_reentrant": False} if config.grad_checkpointing else None,
        learning_rate=config.resolved_lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        save_strategy="steps" if config.save_every else "no",
        save_steps=config.save_every or 500,
        save_total_limit=None,  # scilm rotates, after a new checkpoint is complete (checkpoints.py)
        fsdp=True if config.fsdp else None,
        # read here, not by the Trainer: a byte-order mark is ignored and errors name the file
        fsdp_config=read_json(config.fsdp_config, "--fsdp-config ") if config.fsdp_config else None,
        deepspeed=read_json(config.deepspeed, "--deepspeed ") if config.deepspeed else None,
        logging_steps=10,
        logging_first_step=True,
        report_to=[],
        disable_tqdm=not (config.progress and sys.stderr.isatty()),  # bar frames are noise in a log file
        use_cpu=not torch.cuda.is_available(),  # also what makes multi-process CPU runs DDP (gloo)
        dataloader_num_workers=0,
        remove_unused_columns=False,  # keep each example's sample_index (ScilmTrainer pops it)
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    kwargs.update(evaluation_arguments(config))  # keep_best also sets save_strategy/save_steps
    if config.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ScilmError("--deepspeed needs the deepspeed package (pip install deepspeed) and, "
                             "for ZeRO-3 at scale, CUDA GPUs") from None
    try:
        return TrainingArguments(**{**kwargs, **extra})
    except (ValueError, TypeError) as exc:
        raise ScilmError(f"Trainer settings rejected: {str(exc).splitlines()[0]}") from None


def evaluation_arguments(config) -> dict[str, Any]:
    """When to validate (every ``eval_steps``, else every epoch; not at all in a ``max_steps`` smoke run
    unless ``keep_best``), and ``keep_best``: a checkpoint at every validation, the lowest
    ``eval_loss`` reloaded at the end. A config without evaluation settings (masked-LM) validates never."""
    if not hasattr(config, "eval_steps"):
        return {"eval_strategy": "no"}
    if config.eval_steps:
        strategy = {"eval_strategy": "steps", "eval_steps": config.eval_steps}
    elif config.keep_best or not config.max_steps:
        strategy = {"eval_strategy": "epoch"}
    else:
        strategy = {"eval_strategy": "no"}  # a max_steps smoke run: one validation at the end
    if config.keep_best:
        strategy.update(save_strategy=strategy["eval_strategy"], save_steps=config.eval_steps or 500,
                        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    return strategy


def periodic_subset(valid_set: list, config) -> list:
    """The validation examples of the periodic evaluations: at most ``eval_max_batches`` batches (the
    original's limit_val_batches); the final evaluation always uses them all."""
    limit = getattr(config, "eval_max_batches", None)
    if not limit or limit * config.eval_batch_size >= len(valid_set):
        return valid_set  # the same object: the final evaluation can reuse the last periodic one
    return valid_set[: limit * config.eval_batch_size]


def build_trainer(config, out: Path, precision: str, trainer_kwargs: dict[str, Any], sift_loss=None,
                  args_extra: dict[str, Any] | None = None):
    """The run's Trainer: a :class:`~scilm.training.trainer.ScilmTrainer`, or with smart sifting when
    ``sift_beta`` is set (``sift_loss`` scores samples for the relative policy; see training/sifting.py)."""
    from scilm.training.trainer import ScilmTrainer

    if getattr(config, "sift_beta", None) is None:
        args = training_arguments(config, out / "checkpoints", precision, **(args_extra or {}))
        return ScilmTrainer(args=args, **trainer_kwargs)
    from scilm.training import sifting

    return sifting.build_sifting_trainer(config, precision, out, trainer_kwargs, sift_loss, args_extra)


def prepare_model(model, config, task_type):
    """``model`` with the run's parameter-efficient method (``peft``/``lora``) or a frozen backbone, and
    ESM-2's unused contact head frozen. Returns the model to train."""
    from scilm.models.adapters import apply_peft, freeze_backbone

    freeze_unused(model)
    if getattr(config, "freeze_backbone", False):
        return freeze_backbone(model)
    return apply_peft(model, config.peft_method, task_type, config.lora_r, config.lora_alpha, config.lora_dropout)


def best_checkpoint(trainer) -> dict[str, Any]:
    """The validation (on the periodic subset) whose checkpoint model/ holds (``keep_best``)."""
    path = trainer.state.best_model_checkpoint
    return {"step": int(Path(path).name.rsplit("-", 1)[-1]) if path else None,
            "eval_loss": trainer.state.best_metric}


def trainer_options(config, sample_names: list[str] | None = None) -> dict[str, Any]:
    """ScilmTrainer keyword arguments that come from the run's configuration."""
    return {"skip_nonfinite": config.skip_nonfinite, "keep_checkpoints": config.keep_checkpoints,
            "sample_names": sample_names}


def freeze_unused(model) -> None:
    """Freeze parameters no recipe's loss reaches: ESM-2's contact-prediction head.

    They would count as trainable, get no gradient and carry optimizer state; frozen, the reported
    trainable-parameter count is what training changes (the saved weights are unchanged).
    """
    for name, module in model.named_modules():
        if name.endswith("contact_head"):
            module.requires_grad_(False)


def with_sample_index(examples: list[dict]) -> list[dict]:
    """Tag each training example with its position: bad batches and the reuse policy name samples by it."""
    from scilm.training.trainer import INDEX_KEY

    return [{**example, INDEX_KEY: i} for i, example in enumerate(examples)]


def train_and_measure(trainer, config, precision: str, n_train: int, n_eval: int,
                      mean_tokens: float, parameters: tuple[int, int], eval_dataset=None) -> dict[str, Any]:
    """Train (or resume), evaluate the final weights once, and return the metrics every recipe reports.

    ``eval_dataset``: the full validation set when the periodic evaluations use a subset of it.

    Raises :class:`RunInterrupted` (after the checkpoint is saved) when SIGTERM/Ctrl-C stopped the run.
    """
    from scilm.training.metrics import peak_memory, reset_peak_memory

    processes = world_size()
    engine = ("FSDP" if trainer.is_fsdp_enabled else "DeepSpeed" if trainer.is_deepspeed_enabled
              else "DDP" if processes > 1 else "single process")
    if is_main_process():
        log.info("training in %d process%s (%s)", processes, "es" if processes > 1 else "", engine)
    reset_peak_memory()
    started = time.perf_counter()
    train_output = trainer.train_or_resume(config.resume)
    runtime = time.perf_counter() - started
    peak_mb, peak_method = peak_memory()
    eval_metrics = final_evaluation(trainer, eval_dataset)
    steps_run = trainer.state.global_step - trainer.resumed_step
    samples_seen = steps_run * config.batch_size * config.grad_accum * processes
    history = trainer.eval_history
    return {
        **{k: v for k, v in eval_metrics.items() if k.startswith("eval_")},
        "train_loss": trainer.run_train_loss(train_output.training_loss),
        "train_runtime_s": runtime,
        "train_samples_per_second": samples_seen / runtime,
        "train_tokens_per_second": samples_seen * mean_tokens / runtime,
        "peak_memory_mb": peak_mb,
        "peak_memory_method": peak_method,
        "global_step": trainer.state.global_step,
        "resumed_from_step": trainer.resumed_step or None,
        "train_seconds_total": history.train_seconds(),  # all segments of a resumed run
        "processes": processes,
        "engine": engine,
        "nonfinite_batches_skipped": trainer.nonfinite_skipped,
        "epochs_completed": trainer.data_epochs(),
        "eval_history": history.history,
        "n_train": n_train,
        "n_eval": n_eval,
        "trainable_parameters": parameters[0],
        "total_parameters": parameters[1],
        "precision": precision,
        **({"sifting": trainer.sifting_stats()} if getattr(config, "sift_beta", None) is not None else {}),
        "config": config.to_dict(),
        "versions": library_versions(),
    }


def final_evaluation(trainer, eval_dataset=None) -> dict[str, Any]:
    """Metrics of the final weights on the full validation set, evaluated once.

    The last epoch's evaluation is reused when it was that one: on the full set (not a periodic
    subset), at the last step, and the weights were not replaced since (``--keep-best`` reloading an
    earlier checkpoint). Otherwise the set is evaluated now (and recorded in ``eval_history``; after a
    ``--keep-best`` reload that row says ``weights_of_step``: the checkpoint whose weights it measured).
    """
    from scilm.training.checkpoints import checkpoint_step

    if eval_dataset is None and trainer.eval_dataset is None:  # a recipe without validation (masked-LM)
        return {}
    state, history = trainer.state, trainer.eval_history
    last = history.history[-1] if history.history else None
    full = eval_dataset is None or eval_dataset is trainer.eval_dataset
    best = state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    reloaded = best is not None and checkpoint_step(Path(best)) != state.global_step
    if full and last is not None and last["step"] == state.global_step and not reloaded:
        if history.last_metrics is not None and history.last_metrics.get("step") == state.global_step:
            return dict(history.last_metrics)
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    metrics = trainer.evaluate(eval_dataset=eval_dataset)
    if reloaded and history.history:  # recorded at the last step, but these are the best checkpoint's weights
        history.history[-1]["weights_of_step"] = checkpoint_step(Path(best))
    return metrics


def finish_run(trainer, metrics: dict[str, Any], out: Path, save_model) -> None:
    """Rank 0 writes the model, then metrics.json (its presence marks a finished run), then drops
    the checkpoints (they only serve resuming); other ranks write nothing.

    A sharded model (FSDP, DeepSpeed ZeRO-3) is gathered by the Trainer with every rank taking part.
    """
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        partial = out / ".model.partial"
        trainer.save_model(str(partial))
        if trainer.is_world_process_zero():
            from scilm.models.saving import hub_tensor_names

            hub_tensor_names(partial)  # the Trainer's save keeps transformers' legacy names
            trainer.processing_class.save_pretrained(str(partial))
            replace_dir_atomic(partial, out / "model")
        save_model = None
    if trainer.is_world_process_zero():
        with rundir.writing("cannot write the finished run; its checkpoints are kept (--resume)"):
            if save_model is not None:
                save_model()
            write_json_atomic(out / FINISHED, metrics)
        checkpoints.remove_all_owned(out / "checkpoints")
        rundir.release_lock(out)


def save_run(model, tokenizer, out: Path, lora: bool) -> None:
    """``out/model`` (merged if ``lora``: any PEFT adapter; safetensors only) and ``out/adapter``, each moved
    in whole."""
    from scilm.models.loading import quiet_transformers
    from scilm.models.saving import save_model

    tmp_model, tmp_adapter = out / ".model.partial", out / ".adapter.partial"
    try:
        with quiet_transformers():
            if lora:
                from scilm.models.adapters import save_adapter_run

                model = save_adapter_run(model, tmp_model, tmp_adapter)
                replace_dir_atomic(tmp_adapter, out / "adapter")
            else:
                save_model(model, tmp_model)  # hub tensor names (LayerNorm.weight, not .gamma)
            tokenizer.save_pretrained(str(tmp_model))
        replace_dir_atomic(tmp_model, out / "model")
    finally:  # a failed save (disk full) leaves no half-written directory behind
        for partial in (tmp_model, tmp_adapter):
            shutil.rmtree(partial, ignore_errors=True)


def library_versions() -> dict[str, str]:
    """Versions of scilm, Python, torch, transformers, peft and accelerate, as recorded in metrics.json."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("scilm", "torch", "transformers", "peft", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    versions["cpu_threads"] = str(torch.get_num_threads())
    return versions
