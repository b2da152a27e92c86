"""``ScilmTrainer``: the Hugging Face Trainer plus what long, interruptible runs need.

* Reproducible data order: length-grouped batches drawn from ``seed + epoch`` (the Trainer's
  default draws from the global RNG, so a resumed epoch would see a different order).
* One loss normalisation (``losses.py``): each optimizer step's loss is the summed per-item loss of
  its whole accumulation window (all micro-batches, all processes) / the window's item count, so
  how a window is split over micro-batches and processes changes cost, never its loss or gradient;
  ``eval_loss`` likewise sums over the whole validation set.
* Crash-safe checkpoints: scilm's own state (sifting, eval history) goes into each checkpoint,
  which then gets its ``COMPLETE`` marker (see ``checkpoints.py``); old ones rotate out after. One
  due at an epoch's last step is written after that epoch's evaluation, so resuming from any
  step continues exactly as the uninterrupted run.
* SIGTERM / Ctrl-C: finish the current step, save a checkpoint, stop; the recipe then exits
  non-zero with a message saying how to resume.
* Non-finite loss: stop with the step and the samples of the batch, or skip the batch.

Everything else (DDP, FSDP, DeepSpeed, optimizer, scheduler, RNG restore) is the Trainer's. The
private Trainer parts this relies on are listed (and pinned by a test) in ``trainer_internals.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from scilm.errors import ScilmError
from scilm.io import write_json_atomic
from scilm.models.cls_only import cls_only_last_layer
from scilm.models.loading import quiet_transformers
from scilm.training import checkpoints, rundir
from scilm.training import trainer_internals as internals
from scilm.training.callbacks import EvalHistory
from scilm.training.losses import IGNORE, count_items, cross_entropy_sums
from scilm.distributed import all_reduce, barrier, broadcast_object, is_main_process, rank, world_size

log = logging.getLogger(__name__)

INDEX_KEY = "sample_index"  # each training example's position: names the samples of a bad batch
SIGNAL_FAULT_ENV = "SCILM_FAULT_SIGNAL_AT_STEP"  # tests only: act as if SIGTERM arrived during this step


def signal_fault_at(step: int) -> bool:
    """Tests only: True at optimizer step ``step`` == ``$SCILM_FAULT_SIGNAL_AT_STEP``.

    The trainer then behaves exactly as if SIGTERM had arrived while that step ran (checkpoint
    after the step, stop, exit 143), so a test picks its stop step instead of racing a signal.
    """
    target = os.environ.get(SIGNAL_FAULT_ENV)
    return target is not None and int(target) == step


class NonFiniteLoss(ScilmError):
    """The training loss became NaN or infinite."""


class RunInterrupted(ScilmError):
    """SIGTERM / SIGINT stopped the run after saving a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch``: the same on every rank and after a resume."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's order from ``seed + epoch`` (so a resumed epoch sees the same order)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _RescaleSkipped(TrainerCallback):
    """Without gradient clipping (``max_grad_norm`` 0) the rescale after a skipped batch runs here."""

    def __init__(self, trainer: "ScilmTrainer"):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._rescale_for_skipped(self.trainer.model)  # no-op if clipping already did it


class _StopOnSignal(TrainerCallback):
    """After a step, if any rank got SIGTERM/SIGINT: save, then stop training.

    A checkpoint due at the last step of an epoch (by ``save_every``, a signal or the end of training)
    is written after that epoch's end (its evaluation), not before it: a run resumed from it then
    starts the next epoch exactly where an uninterrupted run does, that evaluation recorded once.
    """

    def __init__(self, trainer: "ScilmTrainer"):
        self.trainer = trainer
        self.save_at_epoch_end = False

    def on_step_end(self, args, state, control, **kwargs):
        if signal_fault_at(state.global_step):  # tests: as if SIGTERM came during this step
            self.trainer.signal_received = signal.SIGTERM
        received = self.trainer.signal_received
        flag = int(all_reduce([0 if received is None else int(received)], args.device, op="max")[0])
        if flag:  # every rank stops at the same step
            self.trainer.interrupted_by = signal.Signals(flag).name
            control.should_save = True
            control.should_training_stop = True
        if control.should_save and self.trainer.epoch_complete():
            control.should_save = False
            self.save_at_epoch_end = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.save_at_epoch_end:
            control.should_save = True
            self.save_at_epoch_end = False
        elif self.trainer.interrupted_by:  # stopped mid-epoch, checkpoint saved: no epoch-end evaluation
            control.should_evaluate = False
            control.should_save = False


class ScilmTrainer(Trainer):
    """A Trainer with seeded length grouping, committed checkpoints, signal handling and NaN checks.

    item_loss: ``(outputs, labels) -> (sums (n,), items (n,))``, the recipe's per-sample loss sums
        (scilm.training.losses); the default is cross-entropy per sample or per token.
    skip_nonfinite: skip (and count) batches whose loss is NaN/inf instead of stopping.
    keep_checkpoints: complete checkpoints kept (the best one, if tracked, is kept besides).
    sample_names: names of the training examples (record ids), for error messages.
    """

    def __init__(self, *args: Any, item_loss=None, skip_nonfinite: bool = False, keep_checkpoints: int = 2,
                 sample_names: list[str] | None = None, **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise ScilmError("ScilmTrainer takes item_loss (per-sample loss sums), not compute_loss_func")
        super().__init__(*args, **kwargs)
        self.item_loss = item_loss or cross_entropy_sums
        self.model_accepts_loss_kwargs = False  # the model never gets num_items_in_batch: we normalise
        if not hasattr(Trainer, "loss_is_scaled_for_ga"):  # before 5.19 the Trainer divides by grad_accum again
            raise ScilmError("this transformers is too old for scilm's loss normalisation under gradient "
                             "accumulation; pip install 'transformers>=5.19'")
        self._steps_in_epoch: int | None = None
        self._data_ended = False  # the last window fetched met the end of the epoch's data
        self._eval_batch = None
        self.skip_nonfinite = skip_nonfinite
        self.keep_checkpoints = keep_checkpoints
        self.sample_names = sample_names
        self.nonfinite_skipped = 0
        self._window_items, self._skipped_items = 0.0, 0.0  # items of the current window, and of its skipped part
        self.eval_history = EvalHistory(epoch_of=self.data_epochs)
        self.resumed_step = 0  # the checkpoint step this run continued from (0: not resumed)
        self.loss_sum_before = 0.0  # summed step losses of the segments before a resume
        self.signal_received: int | None = None
        self.interrupted_by: str | None = None
        self.add_callback(self.eval_history)
        self.add_callback(_StopOnSignal(self))
        self.add_callback(_RescaleSkipped(self))

    # -- data order ---------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset=dataset,
            model_input_name=self.processing_class.model_input_names[0] if self.processing_class else None,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    # -- loss -----------------------------------------------------------------------------------------
    # Our compute_loss returns the window-normalised loss (see losses.py): the Trainer must not divide
    # it by the number of accumulation steps again.
    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: ``sum of this micro-batch's item losses / num_items_in_batch`` (the window's items,
        all processes); evaluation (no window): the batch's mean over its items.

        Under DDP with ``average_tokens_across_devices`` (the default) the count is global and the loss
        is multiplied by the number of processes, which DDP's gradient averaging divides out again
        (the Trainer's own rule for models that take ``num_items_in_batch``).
        """
        indices = inputs.pop(INDEX_KEY, None)
        sums, items, outputs = self.batch_loss(model, inputs, indices)
        total = sums.sum()
        if model.training and num_items_in_batch is not None:
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes
        else:
            loss = total / items.sum().clamp(min=1)
            if not model.training:
                self._eval_batch = (sums.detach(), items.detach())
        if model.training:
            bad = not bool(torch.isfinite(loss.detach()).all())
            if all_reduce([float(bad)], self.args.device, op="max")[0]:  # all ranks stop or skip together
                loss = self._nonfinite(loss, indices, model, here=bad)
                # the window's other micro-batches were divided by a count that included these items
                self._skipped_items += all_reduce([float(items.sum())], self.args.device)[0]
        return (loss, outputs) if return_outputs else loss

    def _rescale_for_skipped(self, model) -> None:
        """After a skipped (non-finite) micro-batch: the window's gradient is a mean over the items that
        remain, as if the skipped batch had never been in the window (called before clipping)."""
        skipped, self._skipped_items = self._skipped_items, 0.0
        total = float(self._window_items or 0)
        if skipped and total > skipped:
            factor = total / (total - skipped)
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.mul_(factor)

    def _clip_grad_norm(self, model):
        self._rescale_for_skipped(model)
        return super()._clip_grad_norm(model)

    def batch_loss(self, model, inputs, indices):
        """(sums (n,), items (n,), outputs) of one batch: each sample's summed item loss and item count.

        The model is called without ``labels`` (its own per-batch mean loss is not used) unless it is
        an encoder-decoder without ``decoder_input_ids`` in the batch; recipes' losses: ``item_loss``.
        """
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        if "decoder_input_ids" not in forward and getattr(config, "is_encoder_decoder", False):
            forward["labels"] = labels
        with cls_only_last_layer(model):  # a sequence classifier reads <cls> alone: same loss, less work
            outputs = model(**forward)
        sums, items = self.item_loss(outputs, labels)
        return sums, items, outputs

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The next accumulation window (up to ``num_batches`` micro-batches) and its item count.

        The count covers every micro-batch of the window and, under DDP, every process. A window cut
        short by the end of the data that the Trainer would not step on (an unsized or shrinking
        loader: sifting) is completed with item-less micro-batches, so its gradient gets its own
        optimizer step instead of leaking into the next window's.
        """
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        self._data_ended = len(batches) < num_batches
        if 0 < len(batches) < num_batches and not self._trainer_steps_after(len(batches)):
            batches += [self._empty_like(batches[-1])] * (num_batches - len(batches))
        if not batches:
            return batches, None
        items = sum(count_items(batch["labels"]) for batch in batches).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            items = self.accelerator.gather(items.reshape(1)).sum()
        self._window_items, self._skipped_items = float(items), 0.0
        return batches, items

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._steps_in_epoch = internals.steps_in_epoch(values)  # it steps at the end of an epoch of this many batches
        return values

    def data_epochs(self) -> float:
        """Passes over the training data done so far (the Trainer's count; sifting counts its own)."""
        return float(self.state.epoch or 0.0)

    def epoch_complete(self) -> bool:
        """Whether the optimizer step just taken was the last of its epoch."""
        epoch = self.state.epoch
        return self._data_ended or bool(epoch and float(epoch).is_integer())

    def _trainer_steps_after(self, short_window: int) -> bool:
        """Whether the Trainer steps after a window cut short by the end of the epoch's data: only when
        the epoch had exactly the number of batches it planned with (a sized loader of fixed length)."""
        loader = self.callback_handler.train_dataloader
        try:
            return len(loader) == self._steps_in_epoch
        except TypeError:
            return False

    @staticmethod
    def _empty_like(batch: dict) -> dict:
        """One sample of ``batch`` with every label -100: it adds nothing to the loss or the gradient."""
        empty = {k: v[:1] for k, v in batch.items() if k != INDEX_KEY}
        empty["labels"] = torch.full_like(empty["labels"], IGNORE)
        return empty

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop, with ``eval_loss`` = summed item losses / items over the whole set.

        The Trainer averages per-batch means weighted by samples, which for token losses depends on
        how the evaluation set is batched (``--eval-batch-size``, length grouping).
        """
        self._eval_totals = torch.zeros(2, dtype=torch.float64)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        key = f"{metric_key_prefix}_loss"
        sums, items = self._eval_totals.tolist()
        if key in output.metrics and items > 0:
            output.metrics[key] = sums / items
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(INDEX_KEY, None)
        self._eval_batch = None
        result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self._eval_batch is not None and hasattr(self, "_eval_totals"):
            sums, items = self._eval_batch
            # per sample, gathered like the Trainer's own losses (padding samples of DDP dropped)
            rows = self.gather_function(torch.stack([sums.double(), items.double()], dim=1))
            self._eval_totals += rows.sum(dim=0).cpu()
        return result

    def _nonfinite(self, loss: torch.Tensor, indices, model, here: bool = True) -> torch.Tensor:
        step = self.state.global_step + 1
        samples = self._describe(indices) if here else f"another rank's batch (rank {rank()} had a finite loss)"
        if not self.skip_nonfinite:
            raise NonFiniteLoss(
                f"non-finite training loss ({float(loss.detach().float().mean())}) at step {step}, batch of {samples}; "
                "lower --lr, check those inputs, resume from the last checkpoint, or pass --skip-nonfinite")
        self.nonfinite_skipped += 1
        log.warning("skipping batch %d of step %d: non-finite loss (%s)", self.nonfinite_skipped, step, samples)
        # zero loss that still touches every trainable weight: all ranks' gradient all-reduce go ahead
        return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)

    def _describe(self, indices) -> str:
        if indices is None:
            return "unknown samples"
        ids = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
        names = [self.sample_names[i] if self.sample_names and i < len(self.sample_names) else f"#{i}" for i in ids]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        return f"samples {', '.join(names[:5])}{more}"

    # -- checkpoints ----------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        path = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        if checkpoints.is_complete(path):  # already saved at this step (e.g. signal, then epoch end)
            return
        if is_main_process():
            rundir.mark_owned(path)  # before any file: only what scilm created is ever deleted
        barrier()
        try:
            with rundir.writing(f"cannot write {path.name}; earlier checkpoints are intact"):
                super()._save_checkpoint(model, trial)
                self.save_extra_state(path)
                loss_sum = self._loss_sum()  # a collective: every rank computes it
                barrier()  # every rank's files are written
                if is_main_process():
                    checkpoints.maybe_inject_fault(path, self.state.global_step)
                    state = {"global_step": self.state.global_step, "world_size": world_size(),
                             "train_seconds": self.eval_history.train_seconds(),
                             "eval_history": self.eval_history.history, "nonfinite_skipped": self.nonfinite_skipped,
                             "train_loss_sum": loss_sum}
                    write_json_atomic(path / checkpoints.SCILM_STATE, state)
                    checkpoints.write_marker(path, {"global_step": self.state.global_step, "saved_at": time.time()})
        except ScilmError:
            if is_main_process():
                rundir.remove_owned(path)  # a partial checkpoint never stays behind
            raise
        if is_main_process():
            checkpoints.rotate(path.parent, self.keep_checkpoints, self.state.best_model_checkpoint)
        barrier()  # nobody moves on (or stops) before the checkpoint is complete

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load checkpoint weights through ``from_pretrained``, which applies the model's key renames.

        The Trainer's own loader is a non-strict ``load_state_dict`` of the raw file: with ESM-2,
        whose checkpoints name LayerNorm weights ``gamma``/``beta``, it silently leaves them at
        their initial values. Sharded (FSDP/DeepSpeed) and PEFT checkpoints keep the Trainer's path.
        """
        model = model if model is not None else self.model
        path = Path(resume_from_checkpoint)
        plain = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not plain or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        with quiet_transformers():
            reloaded = type(model).from_pretrained(str(path), dtype=dtype)
        result = model.load_state_dict(reloaded.state_dict(), strict=False)
        saved_params = {name for name, _ in model.named_parameters()}
        missing = [key for key in result.missing_keys if key in saved_params]
        if missing or result.unexpected_keys:
            raise ScilmError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}); was it written by the same --model?")
        del reloaded

    def _load_best_model(self) -> None:
        """``--keep-best``: reload the best checkpoint the same way as a resume (see above).

        The Trainer's own reload is the same non-strict ``load_state_dict``: ESM-2 LayerNorms would
        stay at their last values, and T5's tied ``lm_head`` is reported as a missing key.
        """
        best = self.state.best_model_checkpoint
        if best is None or self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(self.model, "peft_config"):
            return super()._load_best_model()
        if is_main_process():
            log.info("loading the best checkpoint (step %s, eval_loss %.4f)", Path(best).name.rsplit("-", 1)[-1],
                     self.state.best_metric)
        self._load_from_checkpoint(best)

    def save_extra_state(self, path: Path) -> None:
        """Per-rank state beyond the Trainer's (the sifting trainer saves its selector here)."""

    def load_extra_state(self, path: Path) -> None:
        """Counterpart of :meth:`save_extra_state`, called before training resumes."""

    # -- the run --------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | Path | None = None, **kwargs: Any):
        if resume_from_checkpoint is not None:
            path = Path(resume_from_checkpoint)
            if is_main_process():
                log.info("resuming from %s", path)
            state = checkpoints.read_scilm_state(path)
            self.eval_history.restore(state.get("eval_history", []), state.get("train_seconds", 0.0))
            self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
            self.loss_sum_before = float(state.get("train_loss_sum", 0.0))
            self.resumed_step = int(state.get("global_step", checkpoints.checkpoint_step(path) or 0))
            self.load_extra_state(path)
            resume_from_checkpoint = str(path)
        with self._signals_handled():
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def train_or_resume(self, resume: bool):
        """Train; with ``resume``, continue from the latest complete checkpoint in ``output_dir``.

        A run stopped by SIGTERM/SIGINT raises :class:`RunInterrupted` once its checkpoint is complete.
        """
        output = self.train(resume_from_checkpoint=self.checkpoint_to_resume() if resume else None)
        if self.interrupted_by:
            raise RunInterrupted(
                f"stopped by {self.interrupted_by} at step {self.state.global_step}; checkpoint saved in "
                f"{self.latest_checkpoint()}; to continue, run the same command with --resume",
                exit_code=130 if self.interrupted_by == "SIGINT" else 143)
        return output

    @contextlib.contextmanager
    def _signals_handled(self):
        """SIGTERM/SIGINT set a flag (acted on at the end of the step); a second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signal_received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_received = signum
            who = f"rank {rank()}: " if world_size() > 1 else ""
            log.warning("%sgot %s; saving a checkpoint after this step", who, signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _loss_sum(self) -> float:
        """Sum of the step losses so far, all segments (the Trainer's running sums are private).

        The part not yet logged is per rank: it is averaged over ranks, as the Trainer's logging does.
        """
        running, logged = internals.running_loss(self)
        if running is None:
            return self.loss_sum_before + logged
        unlogged = all_reduce([float(running)], self.args.device)[0] / world_size()
        return self.loss_sum_before + logged + unlogged

    def run_train_loss(self, segment_mean: float) -> float:
        """Mean step loss of the whole run, given this segment's mean (the Trainer's ``training_loss``)."""
        steps = self.state.global_step
        if not self.resumed_step or not steps:
            return segment_mean
        return (self.loss_sum_before + segment_mean * (steps - self.resumed_step)) / steps

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run's output directory, else None."""
        return checkpoints.latest_complete(Path(self.args.output_dir))

    def checkpoint_to_resume(self) -> Path | None:
        """The newest intact checkpoint (sizes and hashes checked); older ones replace damaged ones.

        Rank 0 alone checks (and sets damaged ones aside) and tells the other ranks which one, or
        the error: every rank resumes from the same checkpoint or stops with the same message.
        """
        answer: list = [None]
        if is_main_process():
            try:
                answer = [("ok", checkpoints.latest_intact(Path(self.args.output_dir)))]
            except ScilmError as exc:
                answer = [("error", str(exc))]
        kind, value = broadcast_object(answer[0])
        if kind == "error":
            raise ScilmError(value)
        return value
