"""``SiftingDataloader``: wraps a DataLoader, scores each raw batch, yields batches of kept samples.

It has no fixed length: ``len()`` raises ``TypeError`` (PyTorch's signal for "unsized"; the
Hugging Face Trainer and Lightning catch it), so give trainers ``max_steps`` or let epochs end on
exhaustion. Everything else about selection lives in the pure functions of ``selection.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterable, Iterator, Mapping

import torch

from scilm.errors import ScilmError
from scilm.sifting.batching import BatchTransform, SampleListTransform, batch_size, concat, take, to_device
from scilm.sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
from scilm.sifting.config import RelativeProbabilisticSiftConfig
from scilm.sifting.cost import ON_NO_GAIN, CostVerdict, check_cost
from scilm.distributed import active_world, all_reduce, gather_losses
from scilm.sifting.loss import Loss
from scilm.sifting.selection import LossHistory, select_by_loss

logger = logging.getLogger("scilm.sifting")

_PRECISIONS = {"32": None, "fp32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
               "bf16-true": torch.bfloat16, "16": torch.float16, "fp16": torch.float16, "16-mixed": torch.float16}
_COUNTERS = ("step", "epoch_step", "raw_in_epoch", "read_in_epoch", "epochs", "samples_seen", "samples_kept",
             "samples_passed", "sifted_steps", "scoring_seconds", "loader_seconds", "consumer_seconds", "sifted_train_seconds",
             "sifted_train_samples")


def _autocast_dtype(precision: str | torch.dtype | None) -> torch.dtype | None | bool:
    """None: inherit the active autocast; False: force full precision; a dtype: autocast to it."""
    if precision is None:
        return None
    if isinstance(precision, torch.dtype):
        return False if precision == torch.float32 else precision
    if str(precision) not in _PRECISIONS:
        raise ScilmError(f"precision must be one of {', '.join(_PRECISIONS)} or a torch dtype, got {precision!r}")
    return _PRECISIONS[str(precision)] or False


class SiftingDataloader:
    """Yield batches of the samples the selection rule keeps (the original's interface, extended).

    sift_config: a RelativeProbabilisticSiftConfig (beta, history length, delay).
    orig_dataloader: any iterable of batches (tensor, tuple/list or dict of tensors, nested).
    loss_impl: a ``Loss`` (or callable ``(model, transformed_batch, original_batch)``) -> (n,) losses.
    model: scored in eval mode under ``torch.inference_mode``; its modes are restored afterwards.
    batch_transforms: a ``SiftingBatchTransform`` for custom batch objects: its ``transform`` turns
        each raw batch into a ``SiftingBatch`` (``ListBatch``, ``TensorBatch`` or your own) that is
        scored, selected from and accumulated; ``reverse_transform`` turns each yielded batch back.
    log_batch_data: log (INFO, logger ``scilm.sifting``) every sifted raw batch's per-sample losses
        and which samples were kept and which sifted out. Costs a device-to-host copy per batch:
        for pilot runs, as in the original.
    batch_format_index: for list or tuple batches, which axis indexes the samples: 0 when
        ``batch[i]`` is sample i (a loader with ``collate_fn=list``), 1 when ``batch[j][i]`` is
        field j of sample i (PyTorch's default collate, and what None assumes). The original
        documents the parameter without its values; these are scilm's.
    seed: seeds the sifter's own ``torch.Generator``.
    pad_values: pad value per dict key / tuple position for re-padding (labels -100, masks 0, others 0).
    precision: autocast for scoring ("bf16-mixed", "16-mixed", "32", a dtype); None inherits the
        autocast active while iterating.
    on_no_gain: after ``cost_check_steps`` sifted steps, if scoring costs more than it saves:
        "warn" (log a warning), "disable" (pass batches through unsifted from then on) or "ignore".
    log_every: log the counters every this many steps (0: only at epoch ends).
    distributed: under ``torch.distributed`` (None: detect), rank losses against a global history
        and keep all ranks in lockstep (see below).

    Data parallelism: each rank wraps its own shard loader (same batch size, same number of
    batches, as DistributedSampler / Accelerate give). Every rank gathers all ranks' losses, pushes
    them into the same history and draws the keep decisions for the whole global batch with the
    same seeded generator, so every rank knows every rank's kept count. A batch is yielded when
    *every* rank has a full one; at an epoch's end each rank yields its first m leftover samples,
    m the smallest leftover of any rank, and carries the rest into the next epoch. So ranks never
    yield different numbers of batches, and the reported counts and keep rate are global.
    """

    def __init__(self, sift_config: RelativeProbabilisticSiftConfig, orig_dataloader: Iterable, loss_impl: Loss,
                 model: torch.nn.Module, batch_transforms: SiftingBatchTransform | None = None, seed: int = 0,
                 pad_values: Mapping[Any, float] | None = None, precision: str | torch.dtype | None = None,
                 on_no_gain: str = "warn", cost_check_steps: int = 20, log_every: int = 50,
                 distributed: bool | None = None, log_batch_data: bool = False,
                 batch_format_index: int | None = None):
        if isinstance(sift_config, dict):
            sift_config = RelativeProbabilisticSiftConfig(**sift_config)
        if not isinstance(sift_config, RelativeProbabilisticSiftConfig):
            raise ScilmError(f"sift_config must be a RelativeProbabilisticSiftConfig, got {type(sift_config).__name__}")
        if not (hasattr(loss_impl, "loss") or callable(loss_impl)):
            raise ScilmError("loss_impl must be a scilm.sifting.Loss (with a .loss method) or a callable")
        if batch_transforms is not None and not (hasattr(batch_transforms, "transform")
                                                 and hasattr(batch_transforms, "reverse_transform")):
            raise ScilmError("batch_transforms needs transform() and reverse_transform() methods")
        if batch_format_index not in (None, 0, 1) or isinstance(batch_format_index, bool):
            raise ScilmError(f"batch_format_index must be 0 (batch[i] is sample i), 1 (batch[j][i]: field j of "
                             f"sample i) or None, got {batch_format_index!r}")
        if batch_format_index is not None and batch_transforms is not None:
            raise ScilmError("give batch_transforms or batch_format_index, not both")
        if not isinstance(log_batch_data, bool):
            raise ScilmError(f"log_batch_data must be True or False, got {log_batch_data!r}")
        if on_no_gain not in ON_NO_GAIN:
            raise ScilmError(f"on_no_gain must be one of {', '.join(ON_NO_GAIN)}, got {on_no_gain!r}")
        self.sift_config = sift_config
        self.orig_dataloader = orig_dataloader
        self.loss_impl = loss_impl
        self.model = model
        if batch_transforms is None:
            batch_transforms = SampleListTransform() if batch_format_index == 0 else BatchTransform()
        self.batch_transforms = batch_transforms
        self.log_batch_data = log_batch_data
        self.pad_values = dict(pad_values or {})
        self._autocast = _autocast_dtype(precision)
        self.on_no_gain = on_no_gain
        self.cost_check_steps = cost_check_steps
        self.log_every = log_every
        self.generator = torch.Generator().manual_seed(seed)
        self.history = LossHistory.empty(sift_config.loss_history_length)
        self.cost_verdict: CostVerdict | None = None
        self.disabled = False
        self._batch_size: int | None = getattr(orig_dataloader, "batch_size", None)
        self._counts: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._buffer: list = []  # kept samples not yet yielded, in transformed form
        rank, world = active_world()
        if distributed is False:
            rank, world = 0, 1
        self._rank, self._world = rank, world
        # every rank's count of samples in its buffer (the same list on every rank); ours: [rank]
        self._pending = [0] * world
        self._resuming = False
        self._mark = time.perf_counter()

    # -- the PyTorch iterable protocol ------------------------------------------------------------
    def __len__(self) -> int:
        raise TypeError("a SiftingDataloader has no fixed length: the number of batches depends on the losses")

    def __iter__(self) -> Iterator:
        return self._iterate()

    @property
    def dataset(self):
        """The wrapped loader's dataset (as ``DataLoader.dataset``; HF Trainer and Lightning read it)."""
        return getattr(self.orig_dataloader, "dataset", None)

    @property
    def batch_size(self) -> int | None:
        """The wrapped loader's batch size (batches it yields may be smaller: sifted)."""
        return self._batch_size

    @property
    def epoch_progress(self) -> float:
        """Share of the current epoch's samples read (all ranks), 0 when the dataset has no length.

        Counted in samples, not raw batches: with a ragged last batch the two differ, and the
        learning-rate schedule (which follows this) must not depend on how data is batched.
        """
        try:
            return self._counts["read_in_epoch"] / len(self.dataset)
        except TypeError:
            return 0.0

    @property
    def epoch_done(self) -> bool:
        """True when the batch just yielded was the epoch's last (every raw batch read, none pending)."""
        try:
            read_all = self._counts["raw_in_epoch"] >= len(self.orig_dataloader)
        except TypeError:
            return False
        return read_all and min(self._pending) == 0

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped loader's sampler (DistributedSampler etc.).

        The loader's own epoch count wins over ``epoch``: a trainer resumed mid-run may restart its
        count at 0 (an unsized loader is one "epoch" per pass to it), the data order must not.
        """
        epoch = max(int(epoch), int(self._counts["epochs"]))
        for obj in (self.orig_dataloader, getattr(self.orig_dataloader, "sampler", None),
                    getattr(getattr(self.orig_dataloader, "batch_sampler", None), "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
                return

    # -- iteration --------------------------------------------------------------------------------
    def _iterate(self) -> Iterator:
        c = self._counts
        resumed = self._resuming
        skip = int(c["raw_in_epoch"]) if resumed else 0
        if not resumed:
            c["epoch_step"] = c["raw_in_epoch"] = c["read_in_epoch"] = 0
        self._resuming = False
        rng = torch.get_rng_state()
        it = iter(self.orig_dataloader)
        if resumed:  # iter() drew a worker seed from the global RNG, which the trainer has just restored
            torch.set_rng_state(rng)
        for _ in range(skip):  # resume mid-epoch: these raw batches were consumed before the checkpoint
            next(it, None)
        steps_before = c["step"]
        self._mark = time.perf_counter()
        for raw in it:
            c["raw_in_epoch"] += 1
            if self.disabled or self._in_delay():
                passed = self._count(raw) * self._world  # ranks' batches have equal sizes
                c["samples_passed"] += passed
                c["read_in_epoch"] += passed
                yield from self._emit(raw, sifted=False)
                continue
            batch = self.batch_transforms.transform(raw)
            n = batch_size(batch)
            self._batch_size = self._batch_size or n
            started = time.perf_counter()
            losses = self._score(batch, raw, n)
            keep = self._select(losses)
            c["scoring_seconds"] += time.perf_counter() - started
            if self.log_batch_data:
                self._log_batch(losses, keep)
            index = keep.nonzero().reshape(-1)
            if index.numel():
                self._buffer.append(take(batch, index, n))
            while min(self._pending) >= self._batch_size:
                yield from self._emit(self._pop(self._batch_size), sifted=True)
        final = min(self._pending)  # the final partial batch (of the same size on every rank)
        if final:
            yield from self._emit(self._pop(final), sifted=True)
        c["epochs"] += 1
        c["raw_in_epoch"] = c["read_in_epoch"] = 0  # a finished epoch leaves nothing to skip on resume
        logger.info("sifting epoch done: %s", self._summary())
        if resumed and c["step"] == steps_before:
            # The checkpoint fell at the end of an epoch: its remainder yields nothing, and an empty
            # pass would read as "no data" to a trainer. Go straight on with the next epoch.
            self.set_epoch(int(c["epochs"]))
            yield from self._iterate()

    def _select(self, losses: torch.Tensor) -> torch.Tensor:
        """This rank's keep mask; updates the history, the global counters and every rank's pending count."""
        beta, c = float(self.sift_config.beta_value), self._counts
        if self._world == 1:
            keep = select_by_loss(losses, self.history, beta, self.generator)
            parts = [keep]
        else:
            gathered = gather_losses(losses.to(self._device()), self._batch_size)  # NCCL gathers GPU tensors
            keep_all = select_by_loss(torch.cat(gathered), self.history, beta, self.generator)
            parts = list(torch.split(keep_all, [part.numel() for part in gathered]))
            keep = parts[self._rank]
        for r, part in enumerate(parts):
            self._pending[r] += int(part.sum())
        c["samples_seen"] += sum(part.numel() for part in parts)
        c["read_in_epoch"] += sum(part.numel() for part in parts)
        c["samples_kept"] += sum(int(part.sum()) for part in parts)
        return keep

    def _log_batch(self, losses: torch.Tensor, keep: torch.Tensor) -> None:
        kept = keep.nonzero().reshape(-1).tolist()
        sifted = (~keep).nonzero().reshape(-1).tolist()
        values = ", ".join(f"{x:.4g}" for x in losses.detach().float().cpu().tolist())
        logger.info("sifting batch %d (raw batch %d of the epoch): losses [%s]; kept %s; sifted out %s",
                    int(self._counts["step"]), int(self._counts["raw_in_epoch"]), values, kept, sifted)

    def _count(self, raw: Any) -> int:
        try:
            return batch_size(self.batch_transforms.transform(raw))
        except TypeError:
            return 0

    def _in_delay(self) -> bool:
        base = self.sift_config.base
        done = self._counts["epoch_step"] if base.repeat_delay_per_epoch else self._counts["step"]
        return done < base.sift_delay

    def _pop(self, k: int) -> Any:
        """The first ``k`` buffered samples as one batch (in the caller's batch type)."""
        joined = concat(self._buffer, self.pad_values)
        total = self._pending[self._rank]
        out = take(joined, torch.arange(k), total) if k < total else joined
        self._buffer = [take(joined, torch.arange(k, total), total)] if k < total else []
        self._pending = [pending - k for pending in self._pending]
        return self.batch_transforms.reverse_transform(out), k

    def _emit(self, item: Any, sifted: bool) -> Iterator:
        """Yield one batch, timing the loader side (before) and the training side (between yields)."""
        batch, k = item if sifted else (item, None)
        c = self._counts
        now = time.perf_counter()
        c["loader_seconds"] += now - self._mark
        c["step"] += 1
        c["epoch_step"] += 1
        c["sifted_steps"] += sifted
        yield batch
        self._mark = time.perf_counter()
        c["consumer_seconds"] += self._mark - now
        if sifted:
            c["sifted_train_seconds"] += self._mark - now
            c["sifted_train_samples"] += k
            if self.cost_verdict is None and c["sifted_steps"] >= self.cost_check_steps:
                self._check_cost()
        if self.log_every and c["step"] % self.log_every == 0:
            logger.info("sifting: %s", self._summary())

    def _device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _score(self, batch: Any, raw: Any, n: int) -> torch.Tensor:
        """Per-sample losses without gradients, in eval mode; every module's mode is restored."""
        device = self._device()
        modes = [(m, m.training) for m in self.model.modules()]
        if self._autocast is None:
            cast = contextlib.nullcontext()
        else:
            cast = torch.autocast(device.type, dtype=self._autocast or None, enabled=self._autocast is not False)
        self.model.eval()
        try:
            with torch.inference_mode(), cast:
                scored = to_device(batch, device)
                fn = self.loss_impl.loss if hasattr(self.loss_impl, "loss") else self.loss_impl
                losses = fn(self.model, scored, raw)
        finally:
            for module, mode in modes:
                module.training = mode
        if not isinstance(losses, torch.Tensor) or losses.numel() != n:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ScilmError(f"loss_impl must return one loss per sample ({n}), got {shape}; use reduction='none'")
        return losses.reshape(-1)

    def _check_cost(self) -> None:
        c = self._counts
        # timings summed over ranks, so every rank reaches the same verdict (and stays in lockstep)
        scoring, train_seconds, train_samples = all_reduce(
            [c["scoring_seconds"], c["sifted_train_seconds"], c["sifted_train_samples"]], self._device())
        if not (c["samples_seen"] and train_samples):
            return
        self.cost_verdict = check_cost(scoring / c["samples_seen"], train_seconds / train_samples,
                                       c["samples_kept"] / c["samples_seen"])
        if self.cost_verdict.pays or self.on_no_gain == "ignore":
            logger.info("sifting cost check: %s", self.cost_verdict.message)
        elif self.on_no_gain == "warn":
            logger.warning("sifting cost check: %s", self.cost_verdict.message)
        else:
            self.disabled = True
            logger.warning("sifting cost check: %s; sifting disabled", self.cost_verdict.message)

    # -- counters and checkpoints -----------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Counters: steps, samples seen/kept, realised keep rate, scoring share of wall time."""
        c = self._counts
        wall = c["loader_seconds"] + c["consumer_seconds"]
        return {
            "steps": int(c["step"]), "sifted_steps": int(c["sifted_steps"]), "epochs": int(c["epochs"]),
            "samples_seen": int(c["samples_seen"]), "samples_kept": int(c["samples_kept"]),
            "samples_passed": int(c["samples_passed"]),
            "keep_rate": c["samples_kept"] / c["samples_seen"] if c["samples_seen"] else 1.0,
            "scoring_seconds": c["scoring_seconds"], "wall_seconds": wall,
            "scoring_share": c["scoring_seconds"] / wall if wall else 0.0,
            "disabled": self.disabled, "world_size": self._world,
            "samples_pending": int(sum(self._pending)),  # kept but not yet trained on (carried over)
        }

    def _summary(self) -> str:
        s = self.stats()
        return (f"step {s['steps']}, seen {s['samples_seen']}, kept {s['samples_kept']} "
                f"({s['keep_rate']:.1%}), scoring {s['scoring_share']:.1%} of wall time")

    def state_dict(self) -> dict:
        """Everything that decides future selections: history, RNG, counters, pending samples."""
        if self._buffer and isinstance(self._buffer[0], SiftingBatch):
            # a SiftingBatch is the user's class: store its samples in the loader's own batch form
            buffer = {"reverse_transformed": self.batch_transforms.reverse_transform(concat(self._buffer))}
        else:  # plain types: weights_only load
            buffer = [dict(b) if isinstance(b, Mapping) else b for b in self._buffer]
        return {"history": self.history.state_dict(), "rng": self.generator.get_state(),
                "counts": dict(self._counts), "buffer": buffer,
                "pending": list(self._pending), "world_size": self._world,
                "loss_rng": (self.loss_impl.generator.get_state()  # e.g. RandomLoss, the blind control
                             if isinstance(getattr(self.loss_impl, "generator", None), torch.Generator) else None),
                "batch_size": self._batch_size, "disabled": self.disabled,
                "cost_checked": self.cost_verdict is not None}

    def load_state_dict(self, state: dict) -> None:
        """Restore; the next iteration skips the raw batches the saved run had consumed this epoch.

        Identical continuation needs the wrapped loader to replay the same order (no shuffle, or a
        seeded sampler with ``set_epoch``).
        """
        self.history.load_state_dict(state["history"])
        self.generator.set_state(state["rng"])
        self._counts = {**dict.fromkeys(_COUNTERS, 0), **state["counts"]}
        if int(state.get("world_size", 1)) != self._world:
            raise ScilmError(f"sifting state saved by {state.get('world_size', 1)} processes cannot resume in "
                             f"{self._world}; resume with the same number of processes")
        buffer = state["buffer"]
        if isinstance(buffer, dict) and set(buffer) == {"reverse_transformed"}:
            buffer = [self.batch_transforms.transform(buffer["reverse_transformed"])]
        self._buffer, self._pending = list(buffer), list(state["pending"])
        if state.get("loss_rng") is not None and isinstance(getattr(self.loss_impl, "generator", None), torch.Generator):
            self.loss_impl.generator.set_state(state["loss_rng"])
        self._batch_size = state["batch_size"]
        self.disabled = bool(state["disabled"])
        if state.get("cost_checked") and self.cost_verdict is None:
            self.cost_verdict = CostVerdict(True, float("nan"), float("nan"), float("nan"), "checked before resume")
        self._resuming = True


SiftingDataLoader = SiftingDataloader  # PEP 8 spelling
