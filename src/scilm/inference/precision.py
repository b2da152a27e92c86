"""Inference precision and int8 quantisation chosen by a measured, guarded probe (issue 16).

Which mode is fastest depends on the CPU (bf16 units or not, AMX or not), the model's shape (small
matrices pay more for casts) and the torch build, so nothing here assumes an answer: ``auto`` times a
few forward passes of the actual model on a representative batch of the user's own proteins in each
candidate mode, keeps the modes whose embeddings stay within the quality guard (cosine >= 0.999 to
fp32 per protein, and for a classifier the same predicted label), and picks the fastest. The ranking
is cached per machine + model shape + probe shape + torch version; on a cache hit the guard is still
checked on *these* weights (the cache holds speeds, never a verdict on a model's numbers).

Modes (:data:`MODES`): ``fp32``; ``bf16`` (``torch.autocast`` bf16, fp32 weights); ``bf16-weights``
(weights and activations in bf16); and, asked for with ``quantize="int8"``, two int8 Linear kernels for
the CPU (:data:`INT8_MODES`): ``int8`` (torchao's int8 dynamic-activation + int8-weight, the maintained
library) and ``int8-fbgemm`` (PyTorch's own dynamic int8 Linear on FBGEMM, per-output-channel weight
scales). Which is fast depends on the CPU (``scilm bench inference`` lists both against fp32), so both
are probed and an int8 mode is kept only where it beats the
best precision mode and meets the guard. ``torch.ao.quantization.quantize_dynamic`` is deprecated in
favour of torchao; once a torch release drops it, ``int8-fbgemm`` is simply not a candidate.
Outputs are returned as float32 by ``embed``/``predict`` in every mode. Both int8 kernels quantise a
Linear layer's input with scales taken from the whole tensor (or rounding that depends on its shape),
so an int8 model runs one protein at a time, unpadded (:func:`one_protein_at_a_time`): a protein's
numbers never depend on its batch-mates, the batch size or the input order.

The probe batch is :data:`PROBE_TOKENS` residues of the input's own proteins at their median length
(:func:`probe_shape`); given the job's size, the choice weighs each mode's build seconds (a quantised
copy) against the time it saves on the job.

A classifier's labels stay fp32's (:class:`Fp32Fallback`): the probe measures the largest logit change
of the chosen mode, and every protein whose answer lies within :data:`FALLBACK_SAFETY` times that of a
decision boundary is recomputed by the fp32 model (:func:`fp32_near_boundary`, in predict's and the
server's forward); the share it would recompute, measured on the input's first proteins
(:data:`FALLBACK_SAMPLE_TOKENS`), is priced into the choice at fp32's speed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scilm.errors import ScilmError
from scilm.io import write_json_atomic

log = logging.getLogger(__name__)

MODES = ("fp32", "bf16", "bf16-weights")
PRECISIONS = ("auto", *MODES)
QUANTIZE = ("none", "int8")
INT8_MODES = ("int8", "int8-fbgemm")  # torchao's kernel, PyTorch's FBGEMM kernel
GUARD_COSINE = 0.999  # issue 16: embeddings within cosine 0.999 of fp32
PROBE_POOL = 256  # the first proteins of an input the probe batch is picked from (median length)
PROBE_TOKENS = 512  # residues per probe pass: seconds on 2 cores at the 35M shape, whatever the length
PROBE_LENGTHS = (32, 64, 128, 256, 512, 1024)  # probe lengths: the input's median length rounded down to one
# (attention's share of the time grows with length, so int8's gain, which is in the Linear layers, shrinks:
# at the 35M shape FBGEMM int8 was 1.36x fp32 at 128 residues and 1.10x at 512); a few lengths keep the
# cache useful across inputs
PROBE_REPEATS = 2
ABANDON_FACTOR = 3.0  # a mode whose first pass is this much slower than the best so far is not timed further
CANARY_RESIDUES = 32  # a one-protein pass that finds a hopeless mode in a fraction of a second
# (bf16 on a CPU without bf16 units, torchao's int8 on one without its kernels: 10-500x fp32)
CACHE_VERSION = 4  # 2: a classifier's passes timed as predict runs them (the last layer at <cls> only); 3: one-kernel
# GELU; 4: probe length from the input's median, and each mode's build seconds
INT8_MIN_GAIN = 1.10  # int8 changes the numbers: kept only when clearly faster, not within timing noise

_clock = time.perf_counter


@dataclass
class InferencePlan:
    """What :func:`prepare_for_inference` chose and why.

    ``mode``: one of :data:`MODES` or :data:`INT8_MODES`; ``seconds``: probe seconds per forward pass by mode
    (None for a mode not timed); ``cosine``: the smallest per-protein embedding cosine to fp32 on the
    probe batch by mode; ``labels_agree``: for a classifier, whether every predicted label matched
    fp32; ``cached``: the speed ranking came from the cache; ``notes``: plain lines for the user;
    ``build_seconds``: seconds to make the mode's model (a quantised or cast copy; 0 for fp32 and
    autocast); ``probe_shape``: (proteins, residues each) of the probe batch; ``job_residues``: the
    residues the job feeds, when known (the choice then weighs build seconds against the job's time);
    ``fallback_delta``: for a classifier in a reduced mode, the largest logit change on the probe
    (:class:`Fp32Fallback`: answers within ``FALLBACK_SAFETY`` x of it from a boundary are fp32's);
    ``fallback_share``: the share of the input's first proteins (:data:`FALLBACK_SAMPLE_TOKENS`; the probe's
    when a mode was named) that fallback would rerun (its cost is in the choice); ``fallback_mb``: the
    fp32 weights kept for it (MB).
    """

    mode: str
    seconds: dict[str, float | None] = field(default_factory=dict)
    cosine: dict[str, float] = field(default_factory=dict)
    labels_agree: dict[str, bool] = field(default_factory=dict)
    cached: bool = False
    notes: list[str] = field(default_factory=list)
    build_seconds: dict[str, float] = field(default_factory=dict)
    probe_shape: tuple[int, int] | None = None
    job_residues: int | None = None
    fallback_delta: float | None = None
    fallback_share: float | None = None
    fallback_mb: float | None = None

    def summary(self) -> str:
        """One line, e.g. ``precision bf16 (probe s/pass: fp32 0.52, bf16 0.31; guard cosine 0.99997)``."""
        times = ", ".join(f"{m} {s:.3g}" for m, s in self.seconds.items() if s is not None)
        cos = self.cosine.get(self.mode)
        guard = f"; guard cosine {cos:.5f}" if cos is not None and self.mode != "fp32" else ""
        source = " cached ranking" if self.cached else ""
        fallback = ("" if self.fallback_delta is None else
                    f"; answers within {FALLBACK_SAFETY * self.fallback_delta:.3g} logits of a decision boundary "
                    f"recomputed in fp32: {100 * (self.fallback_share or 0):.0f} % of the first proteins; fp32 "
                    f"weights kept: {self.fallback_mb or 0:,.0f} MB")
        return f"precision {self.mode} (probe{source} s/pass: {times or 'not timed'}{guard}{fallback})"


# ---------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$SCILM_CACHE_DIR``, else ``$XDG_CACHE_HOME/scilm``, else ``~/.cache/scilm``."""
    if os.environ.get("SCILM_CACHE_DIR"):
        return Path(os.environ["SCILM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scilm"


def cpu_description() -> dict[str, Any]:
    """CPU model name, the ISA flags that decide bf16/int8 speed, logical cores (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
              "avx512_fp16", "asimd", "sve", "bf16", "i8mm")
    return {"cpu": name, "isa": [f for f in wanted if f in flags], "cores": os.cpu_count() or 0}


def probe_key(model, device: torch.device, batch: int, length: int, candidates: Sequence[str]) -> dict[str, Any]:
    """What a cached ranking is valid for: machine, threads, device, model shape, probe shape, torch."""
    cfg = model.config
    shape = {k: getattr(cfg, k, None) for k in ("model_type", "num_hidden_layers", "hidden_size",
                                                  "num_attention_heads", "intermediate_size")}
    shape["class"] = type(model).__name__
    machine = cpu_description()
    machine["threads"] = torch.get_num_threads()
    machine["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"version": CACHE_VERSION, "machine": machine, "model": shape, "probe": [batch, length],
            "candidates": list(candidates), "torch": torch.__version__,
            "attention": getattr(cfg, "_attn_implementation", None)}


def _cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "precision" / f"{digest}.json"


def read_cache(key: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, float]] | None:
    """The cached (seconds per probe pass, build seconds) per mode for ``key``, or None (absent; or
    unreadable, which is logged and ignored)."""
    path = _cache_path(key)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        seconds = data["seconds"]
        if data["key"] != key or not isinstance(seconds, dict) or set(seconds) != set(key["candidates"]):
            raise ValueError("its key does not match this machine/model")
        build = data["build"]
        if not isinstance(build, dict) or not set(build) <= set(seconds):
            raise ValueError("its build seconds do not match its modes")
        for value in seconds.values():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"bad time {value!r}")
        for value in build.values():
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"bad build time {value!r}")
        return ({m: (None if v is None else float(v)) for m, v in seconds.items()},
                {m: float(v) for m, v in build.items()})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the precision cache file %s (%s); probing again", path, exc)
        return None


def write_cache(key: dict[str, Any], seconds: dict[str, float | None], build: dict[str, float] | None = None) -> None:
    """Store the probe's seconds per pass and build seconds per mode (atomically); a cache that cannot be
    written is only logged."""
    try:
        write_json_atomic(_cache_path(key), {"key": key, "seconds": seconds, "build": build or {},
                                             "written": time.time()})
    except OSError as exc:
        log.warning("cannot write the precision cache under %s (%s)", cache_dir(), exc)


# ----------------------------------------------------------------------------------------------- modes


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bf16_usable(device: torch.device) -> bool:
    """Whether bf16 kernels exist for ``device`` at all (speed is the probe's business)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def int8_variant(model):
    """A copy of ``model`` whose Linear layers are torchao int8 dynamic-activation + int8-weight (CPU).

    Raises ScilmError when torchao is not installed (``pip install 'scilm[fast]'``) or cannot quantise.
    """
    from scilm._extras import optional_extra

    with optional_extra("fast"):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    quantized = copy.deepcopy(model)
    try:
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    except Exception as exc:  # torchao raises many kinds for an unsupported build
        raise ScilmError(f"quantize int8: torchao cannot quantise this model here ({exc})") from None
    return one_protein_at_a_time(quantized)


def _pad_to(tensor: torch.Tensor, dims: tuple[int, ...], length: int) -> torch.Tensor:
    """``tensor`` zero-padded at the end of each of ``dims`` to ``length``."""
    pad: list[int] = []
    for dim in reversed(range(tensor.dim())):
        pad += [0, length - tensor.shape[dim] if dim in dims else 0]
    return torch.nn.functional.pad(tensor, pad)


def one_protein_at_a_time(model):
    """``model`` (in place) with a ``forward`` that runs each protein of a batch alone, without padding,
    and returns the outputs stacked as the batched forward would: (B, T, ...) per-position outputs
    zero-padded to T at padded positions, (B, ...) per-protein ones stacked.

    Why: dynamic int8 Linear layers quantise their input with one scale per tensor (FBGEMM) or rounding
    that depends on the matrix shape, so in a padded batch a protein's numbers depended on the other
    proteins and on the padding (embeddings of the esm2-8m-shaped demo model moved by up to 0.7 % between
    batch sizes 16 and 1; fp32: 1.5e-7). One protein per pass makes every output a function of that
    protein alone: ``batch_size`` and input order change cost, never the answer. Raises ScilmError when
    called with ``labels`` (inference only) or with an output it cannot restack.
    """
    def run(forward, input_ids=None, attention_mask=None, **kwargs):
        if kwargs.get("labels") is not None:
            raise ScilmError("an int8 model runs one protein at a time for inference only (no labels)")
        if kwargs.get("inputs_embeds") is not None or input_ids is None or input_ids.dim() != 2:
            raise ScilmError("an int8 model runs one protein at a time from input_ids (B, T)")
        if kwargs.get("return_dict") is False:
            raise ScilmError("an int8 model runs one protein at a time and returns model outputs (return_dict)")
        batch, length = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        lengths = [int(n) for n in mask.bool().sum(dim=1).tolist()]
        if any(not bool(mask[i, :n].bool().all()) for i, n in enumerate(lengths)):
            raise ScilmError("an int8 model runs one protein at a time from right-padded batches "
                             "(the attention mask must be ones, then zeros)")
        if batch == 1 and lengths[0] == length:
            return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        per_position = {k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == (batch, length)}
        rows = [forward(input_ids=input_ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n],
                        **{k: (v[i:i + 1, :n] if k in per_position else v) for k, v in kwargs.items()})
                for i, n in enumerate(lengths)]
        return _restack(rows, length)

    return wrap_forward(model, run)


def wrap_forward(model, wrapper: Callable[..., Any]):
    """``model`` (in place) whose ``forward(*args, **kwargs)`` is ``wrapper(forward, *args, **kwargs)``,
    ``forward`` being the forward it had. Bound to the instance, so ``copy.deepcopy(model)`` gives a copy
    that runs its own weights (a plain closure would still call the original's). Only when ``forward``
    was the class's (or already bound to ``model``): a plain function set on the instance by another
    library is called as it is, and a copy would still run it."""
    inner = model.forward
    inner_func = inner.__func__ if getattr(inner, "__self__", None) is model else None

    def forward(self, *args, **kwargs):
        call = inner_func.__get__(self) if inner_func is not None else inner
        return wrapper(call, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
    return model


def _restack(rows: list, length: int):
    """One batched model output from per-protein outputs (see :func:`one_protein_at_a_time`)."""
    def stack(key: str, values: list):
        first = values[0]
        if first is None:
            return None
        if isinstance(first, tuple):
            return tuple(stack(key, [v[k] for v in values]) for k in range(len(first)))
        if not isinstance(first, torch.Tensor):
            raise ScilmError(f"int8 inference: cannot restack the model output {key!r}")
        if key == "attentions":
            return torch.cat([_pad_to(v, (2, 3), length) for v in values])  # (1, heads, n, n)
        if first.dim() >= 3 or key == "last_hidden_state":
            return torch.cat([_pad_to(v, (1,), length) for v in values])  # (1, n, ...) per position
        return torch.cat(values)  # (1, ...) per protein: pooled output, sequence-level logits

    if not hasattr(rows[0], "keys"):
        raise ScilmError("int8 inference: the model returned a tuple; one protein at a time needs model outputs")
    fields = {key: stack(key, [row[key] for row in rows]) for key in rows[0].keys()}
    return type(rows[0])(**fields)


def fbgemm_available() -> bool:
    """Whether this torch build has PyTorch's dynamic int8 Linear on FBGEMM (x86 CPUs)."""
    quantization = getattr(torch.ao, "quantization", None)
    engines = torch.backends.quantized.supported_engines
    return hasattr(quantization, "quantize_dynamic") and ("fbgemm" in engines or "x86" in engines)


def fbgemm_int8_variant(model):
    """A copy of ``model`` whose ``nn.Linear`` layers are PyTorch's dynamic int8 Linear on FBGEMM: int8
    weights with one scale per output channel, activations quantised per batch at run time (CPU only).

    Raises ScilmError when this torch build has no FBGEMM int8 kernels.
    """
    import warnings

    if not fbgemm_available():
        raise ScilmError("quantize int8: this torch build has no FBGEMM int8 Linear")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice pointing to torchao: both are probed
        quantized = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig})
    return one_protein_at_a_time(quantized)


def variant(model, mode: str) -> tuple[Any, Callable[[], Any]]:
    """(model to call, context factory) running ``model`` in ``mode``; ``model`` itself is not changed."""
    device = next(model.parameters()).device
    if mode == "fp32":
        return model, contextlib.nullcontext
    if mode == "bf16":
        return model, lambda: _autocast(device)
    if mode == "bf16-weights":
        return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext
    if mode == "int8":
        return int8_variant(model), contextlib.nullcontext
    if mode == "int8-fbgemm":
        return fbgemm_int8_variant(model), contextlib.nullcontext
    raise ScilmError(f"precision must be one of {', '.join(PRECISIONS)} (got {mode!r})")


def apply_mode(model, mode: str, prebuilt=None):
    """``model`` made to run in ``mode`` for good; returns the model to use.

    ``bf16`` returns a shallow copy (the same weights) whose ``forward`` runs in ``torch.autocast``, so
    callers such as :func:`scilm.inference.embed_proteins` need no change; ``bf16-weights`` a bf16 copy;
    ``int8`` a quantised copy. ``model`` itself is never changed (it stays the fp32 reference of
    :class:`Fp32Fallback`). ``prebuilt``: the copy :func:`variant` already made for ``mode`` (the one the
    probe guarded), used instead of building another. The result carries
    ``scilm_inference_mode`` (embed's resume fingerprint tells the modes apart: chunks of another mode
    are never reused).
    """
    if mode == "fp32":
        return model
    if prebuilt is not None and mode in ("bf16-weights", *INT8_MODES):
        model = prebuilt
    elif mode == "bf16":
        device = next(model.parameters()).device

        def autocast(forward, *args, **kwargs):
            with _autocast(device):
                return forward(*args, **kwargs)

        model = wrap_forward(copy.copy(model), autocast)  # shares the weights; the original stays fp32
    else:
        model = variant(model, mode)[0]  # a copy; raises for an unknown mode
    model.scilm_inference_mode = mode
    return model


# ----------------------------------------------------------------------------------------------- probe


def probe_shape(sequences: Sequence[str]) -> tuple[int, int]:
    """(batch, residues) of the probe for these proteins: ``residues`` the median length rounded down to
    one of :data:`PROBE_LENGTHS` (the median itself below the shortest), ``batch`` enough proteins for
    :data:`PROBE_TOKENS` residues (at least 1). ``sequences`` are as the job feeds them (cut to its length).

    Raises ScilmError when ``sequences`` is empty.
    """
    if not sequences:
        raise ScilmError("precision probe: no sequences to probe with")
    median = sorted(len(s) for s in sequences)[len(sequences) // 2]
    fitting = [n for n in PROBE_LENGTHS if n <= median]
    residues = max(1, fitting[-1] if fitting else median)
    return max(1, PROBE_TOKENS // residues), residues


def probe_sequences(sequences: Sequence[str], batch: int | None = None, residues: int | None = None) -> list[str]:
    """A representative probe batch: ``batch`` proteins from the median length up, each cut to
    ``residues`` (defaults: :func:`probe_shape`), so every protein of the batch has about ``residues``
    residues when the input has enough proteins that long. Fewer proteins when the input has fewer.

    Raises ScilmError when ``sequences`` is empty.
    """
    default_batch, default_residues = probe_shape(sequences)
    batch = default_batch if batch is None else batch
    residues = default_residues if residues is None else residues
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    start = max(0, min(len(order) // 2, len(order) - batch))
    return [sequences[i][:residues] for i in order[start:start + batch]]


def _pooled(output, mask: torch.Tensor) -> torch.Tensor:
    """(B, H) float32 mean over residues of the last hidden layer (<cls>, <eos>, padding excluded)."""
    hidden = output.hidden_states[-1] if getattr(output, "hidden_states", None) else output.last_hidden_state
    hidden = hidden.float()
    weights = residue_positions(mask).unsqueeze(-1).float()
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


REGRESSION_TOLERANCE = 0.01  # largest change of a regression output allowed, in training target SDs


def _answers(model, logits: torch.Tensor | None) -> torch.Tensor | None:
    """What predict reports, in a comparable form: the label (B,) of a single-label classifier, the
    thresholded label set (B, C) of a multi-label one, the standardised output (B, T) of a regression."""
    if logits is None:
        return None
    from scilm.inference.predict import is_regression, multilabel_thresholds

    config = getattr(model, "config", None)
    logits = logits.float()
    if config is not None and is_regression(config):
        return logits  # in target SDs (the stored standardisation), compared with REGRESSION_TOLERANCE
    thresholds = multilabel_thresholds(config) if config is not None else None
    if thresholds:
        return torch.sigmoid(logits) >= _threshold_tensor(config, thresholds)
    return logits.argmax(-1)


@torch.inference_mode()
def _forward(model, context, encoded) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(pooled embeddings (B, H), answers, float32 logits (B, C) or (B, T, C) or None) of one pass; a
    classifier's answers come from the forward predict and serve run (its last layer at <cls> only where
    that applies), not from the hidden-states pass."""
    from scilm.models.cls_only import cls_only_last_layer

    with context():
        output = model(**encoded, output_hidden_states=True)
        logits = getattr(output, "logits", None)
        if logits is not None:
            with cls_only_last_layer(model) as applied:
                if applied:
                    logits = model(**encoded).logits
    logits = None if logits is None else logits.float()
    return _pooled(output, encoded["attention_mask"]), _answers(model, logits), logits


@torch.inference_mode()
def _timed_forward(model, context, encoded) -> None:
    """One forward as the commands run it: no hidden states asked for, and a sequence classifier's
    last layer at <cls> only where that applies (predict, serve; :mod:`scilm.models.cls_only`), so a
    mode that cannot use it (int8) is timed against what fp32 really costs."""
    from scilm.models.cls_only import cls_only_last_layer

    with context(), cls_only_last_layer(model):
        model(**encoded)


def _time_forward(mode: str, run: Callable[[], Any], repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``run()`` (tests replace this with a fixed table per mode)."""
    best = float("inf")
    for _ in range(repeats):
        start = _clock()
        run()
        best = min(best, _clock() - start)
    return best


def guard(reference: tuple[torch.Tensor, torch.Tensor | None], result: tuple[torch.Tensor, torch.Tensor | None]
          ) -> tuple[float, bool]:
    """(smallest per-protein cosine of pooled embeddings, every answer the same) vs the fp32 reference:
    the same labels, the same multi-label sets, regression outputs within ``REGRESSION_TOLERANCE``."""
    cosine = torch.nn.functional.cosine_similarity(result[0], reference[0], dim=-1).min().item()
    if reference[1] is None:
        agree = True
    elif reference[1].is_floating_point():
        agree = bool((reference[1] - result[1].float()).abs().max() <= REGRESSION_TOLERANCE)
    else:
        agree = bool(torch.equal(reference[1], result[1]))
    return cosine, agree


def passes(cosine: float, agree: bool) -> bool:
    """Whether a mode meets the quality guard: cosine at least ``GUARD_COSINE`` and every answer the same."""
    return cosine >= GUARD_COSINE and agree


def choose(seconds: dict[str, float | None], ok: dict[str, bool]) -> str:
    """The fastest mode that passed the guard (fp32 always passes); ties go to the earlier candidate."""
    fine = [m for m, s in seconds.items() if s is not None and ok.get(m, m == "fp32")]
    return min(fine, key=lambda m: seconds[m]) if fine else "fp32"


# ------------------------------------------------------------------------------- fp32 near a boundary

FALLBACK_SAFETY = 16.0  # the fallback margin: this many times the largest logit change measured (probe + sample).
# The change is heavy-tailed across proteins: on the demo model and 1,678 DeepLoc-1 validation proteins the
# largest was 5.6-13.8x that delta by mode, and the labels that changed sat within 4.2x it of the boundary
# (docs/bench/fallback)
FALLBACK_SAMPLE_TOKENS = 4096  # residues of the input's first proteins run in fp32 and the chosen reduced mode:
# the fallback's delta and the share of answers it reruns in fp32 (a probe batch of 1-2 proteins cannot tell)


def residue_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the residue tokens of a right-padded ESM batch (``<cls>``, ``<eos>`` and padding excluded)."""
    residues = attention_mask.bool().clone()
    residues[:, 0] = False
    residues[torch.arange(len(residues)), attention_mask.sum(dim=1) - 1] = False
    return residues


def _threshold_tensor(config, thresholds: dict[str, float]) -> torch.Tensor:
    """(C,) a multi-label model's thresholds in class order (``thresholds``: by label name)."""
    return torch.tensor([thresholds[config.id2label[i]] for i in range(config.num_labels)])


def decision_margin(config, logits: torch.Tensor) -> torch.Tensor | None:
    """How far each answer is from changing, as the smallest change of every logit that could change it:
    (N,) for sequence logits (N, C), (N, T) for per-residue logits (N, T, C); None for a regression model
    (its answer is the number itself, no decision).

    Single-label (argmax): half the gap between the top two logits (each moving by d moves the gap by at
    most 2d); one class: infinite. Multi-label: the smallest distance of a logit from its threshold's logit,
    ``log(t / (1 - t))`` (:func:`scilm.inference.predict.multilabel_thresholds`).
    """
    from scilm.inference.predict import is_regression, multilabel_thresholds

    if is_regression(config):
        return None
    logits = logits.float()
    thresholds = multilabel_thresholds(config)
    if thresholds:
        t = _threshold_tensor(config, thresholds).clamp(1e-6, 1 - 1e-6)
        return (logits - torch.log(t / (1 - t))).abs().amin(dim=-1)
    if logits.shape[-1] < 2:
        return torch.full(logits.shape[:-1], float("inf"))
    top = logits.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) / 2


def protein_margin(config, logits: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """(N,) :func:`decision_margin` per protein: a per-residue model's (N, T, C) logits give the smallest
    margin over the residues of ``attention_mask`` (N, T); None for a regression model."""
    margin = decision_margin(config, logits)
    if margin is not None and margin.dim() == 2:
        margin = margin.masked_fill(~residue_positions(attention_mask), float("inf")).amin(dim=1)
    return margin


def logit_change(reference: torch.Tensor, result: torch.Tensor, attention_mask: torch.Tensor | None = None) -> float:
    """The largest absolute change of any logit, ``result`` against ``reference`` ((B, C), or (B, T, C) read at
    the residue positions of ``attention_mask`` only)."""
    change = (result.float() - reference.float()).abs()
    if change.dim() == 3:
        change = change[residue_positions(attention_mask)]
    return float(change.max()) if change.numel() else 0.0


@dataclass
class Fp32Fallback:
    """fp32's answer wherever a reduced precision could change it: issue 16's label guard, at run time.

    bf16 and int8 move each logit of a protein by a small amount; a predicted label (argmax, or a
    multi-label threshold) can change only where fp32's :func:`decision_margin` is smaller than that move.
    ``delta`` is the largest logit change measured against fp32 on the probe batch (:func:`logit_change`);
    an answer whose margin in the reduced precision is at most ``FALLBACK_SAFETY * delta`` is recomputed
    by ``reference``, the fp32 model (:func:`fp32_near_boundary`). ``delta`` is fixed once chosen, so a
    protein's answer depends on the protein and the probe alone, never on what ran before it. A
    statistical guard, not a proof: the probe sees a few proteins and the change is heavy-tailed (see :data:`FALLBACK_SAFETY`); measured, on the demo model and the
    1,678 DeepLoc-1 validation proteins no label differs from fp32's in any mode (``scilm bench inference
    --guard-model``). Probabilities elsewhere stay the mode's (within its guard); regression outputs have
    no decision and are not recomputed. ``proteins``/``recomputed`` count what was checked and rerun.
    """

    reference: Any
    delta: float
    proteins: int = 0
    recomputed: int = 0

    @property
    def margin(self) -> float:
        """Answers this close to their decision boundary (logit units, :func:`decision_margin`) are fp32's."""
        return FALLBACK_SAFETY * self.delta


def probe_logit_change(model, reference, tokenizer, sequences: Sequence[str]) -> float:
    """The largest logit change of ``model`` against the fp32 ``reference`` on the probe batch of ``sequences``
    (:func:`probe_sequences`; as the job feeds them) and on their first :data:`FALLBACK_SAMPLE_TOKENS`
    residues: the ``delta`` :func:`prepare_for_inference` gives :class:`Fp32Fallback`, for a model made
    outside it (``scilm bench inference``)."""
    probe = probe_sequences(list(sequences))
    encoded = tokenizer(probe, padding=True, return_tensors="pt").to(next(reference.parameters()).device)
    expected = _forward(reference, contextlib.nullcontext, encoded)[2]
    delta = logit_change(expected, _forward(model, contextlib.nullcontext, encoded)[2], encoded["attention_mask"])
    return _sample_fallback(model, contextlib.nullcontext, reference, tokenizer, _share_sample(sequences), delta)[0]


def fallback_share(config, reference: torch.Tensor, logits: torch.Tensor, attention_mask: torch.Tensor
                   ) -> tuple[float, float]:
    """(delta, share): the largest logit change of ``logits`` against fp32's ``reference`` on a probe batch
    (:func:`logit_change`), and the share of its proteins :class:`Fp32Fallback` would recompute in fp32
    with that delta. The share's fp32 passes are part of a mode's cost when the mode is chosen.
    Raises ScilmError for a model without a decision (regression)."""
    margin = protein_margin(config, logits, attention_mask)  # (N,)
    if margin is None:
        raise ScilmError("a regression model has no decision boundary to fall back near")
    delta = logit_change(reference, logits, attention_mask)
    return delta, _near_share(margin, delta)


def _near_share(margin: torch.Tensor, delta: float) -> float:
    """The share of proteins whose (N,) :func:`protein_margin` is within the fallback margin of ``delta``."""
    return float((margin <= FALLBACK_SAFETY * delta).float().mean()) if len(margin) else 0.0


def with_fp32_fallback(model, reference, delta: float):
    """``model`` (a reduced-precision copy or wrapper) whose answers near a decision boundary are ``reference``'s
    (fp32; see :class:`Fp32Fallback`); returns ``model``. Read by :func:`fp32_near_boundary`."""
    model.scilm_fp32_fallback = Fp32Fallback(reference, float(delta))
    return model


def fp32_near_boundary(model, logits: torch.Tensor, recompute: Callable[[Any, list[int]], torch.Tensor],
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` (N, C), or per-residue (N, T, C) with their ``attention_mask`` (N, T), with every row whose
    answer lies within the model's :class:`Fp32Fallback` margin replaced by ``recompute(reference, rows)``:
    the fp32 ``reference`` model's logits of those rows, the same shape per row. A model without a fallback (fp32) or without a
    decision (regression) gets ``logits`` back unchanged. A per-residue row is recomputed whole when any of
    its residues is near a boundary.
    """
    fallback = getattr(model, "scilm_fp32_fallback", None)
    margin = None if fallback is None else protein_margin(model.config, logits, attention_mask)
    if margin is None:
        return logits
    rows = (margin <= fallback.margin).nonzero().flatten().tolist()
    fallback.proteins += len(logits)
    fallback.recomputed += len(rows)
    if not rows:
        return logits
    logits = logits.clone()
    logits[rows] = recompute(fallback.reference, rows).to(logits.dtype)
    return logits


def check_modes(precision: str, quantize: str) -> None:
    """Raise :class:`ScilmError` naming the setting unless ``precision`` is one of :data:`PRECISIONS`
    and ``quantize`` one of :data:`QUANTIZE`."""
    if precision not in PRECISIONS:
        raise ScilmError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if quantize not in QUANTIZE:
        raise ScilmError(f"quantize must be one of {', '.join(QUANTIZE)} (got {quantize!r})")


def prepare_for_inference(model, tokenizer, sequences: Sequence[str], precision: str = "fp32",
                          quantize: str = "none", use_cache: bool = True, job_residues: int | None = None
                          ) -> tuple[Any, InferencePlan]:
    """The model to use for ``embed``/``predict`` in the chosen mode, and an :class:`InferencePlan`.

    ``precision``: ``fp32`` (nothing probed, the model returned as is), ``bf16``/``bf16-weights`` (checked by
    the guard on a probe batch; if it fails, fp32 with a note), or ``auto`` (every usable mode probed
    on :func:`probe_sequences` of ``sequences``, the fastest that meets the guard). ``quantize="int8"``
    adds the int8 kernels of :data:`INT8_MODES` (CPU only), the fastest kept only when :data:`INT8_MIN_GAIN` x
    faster than the best precision mode and within the guard, else the precision mode with a note.

    "Faster" is per probe pass, or, when ``job_residues`` (the residues the job will feed) is given, the
    estimated seconds of the whole job: the mode's build seconds (quantising a 35M model: seconds) plus
    ``job_residues`` at the probe's seconds per residue, so a short job does not pay for a copy that
    saves less than it costs. ``sequences``: the proteins as the job feeds them (cut to its length).
    Raises ScilmError for an unknown setting, for int8 off CPU and for int8 without torchao.
    """
    check_modes(precision, quantize)
    device = next(model.parameters()).device
    if quantize == "int8" and device.type != "cpu":
        raise ScilmError("quantize int8 runs on CPU only (dynamic int8 Linear kernels); use precision on a GPU")
    if precision == "fp32" and quantize == "none":
        return model, InferencePlan("fp32")
    notes: list[str] = []
    if precision == "auto":
        candidates = ["fp32"] + [m for m in MODES[1:] if bf16_usable(device)]
    else:
        candidates = ["fp32"] + ([precision] if precision != "fp32" else [])
    if quantize == "int8":
        from scilm._extras import require

        require("fast", "torchao")  # before any probing
        candidates.append("int8")
        if fbgemm_available():
            candidates.append("int8-fbgemm")
    probe = probe_sequences(list(sequences))
    probe_residues = max(1, sum(len(s) for s in probe))
    encoded = tokenizer(probe, padding=True, return_tensors="pt").to(device)
    batch, length = encoded["input_ids"].shape
    key = probe_key(model, device, batch, length, candidates)
    cacheable = use_cache and (precision == "auto" or (precision == "fp32" and quantize == "int8"))  # no guard owed
    cached = read_cache(key) if cacheable else None
    seconds: dict[str, float | None] = {}
    build: dict[str, float] = {}
    built: dict[str, Any] = {}  # each mode's model as guarded: the chosen one is used, not built again
    contexts: dict[str, Callable[[], Any]] = {}
    cosine: dict[str, float] = {}
    agree: dict[str, bool] = {}
    fallback: dict[str, tuple[float, float]] = {}  # a classifier's (delta, share of the probe recomputed) by mode

    def check(mode: str, result) -> None:
        cosine[mode], agree[mode] = guard(reference, result)
        if reference[2] is not None and decision_margin(model.config, reference[2]) is not None:
            fallback[mode] = fallback_share(model.config, reference[2], result[2], encoded["attention_mask"])

    def cost(mode: str) -> float | None:
        """Seconds per probe pass; or, for a job of known size, its estimated seconds, the build included
        unless this call has already built the mode (then it is paid)."""
        if seconds.get(mode) is None:
            return None
        per_pass = seconds[mode] + fallback.get(mode, (0.0, 0.0))[1] * (seconds.get("fp32") or 0.0)  # + fp32 reruns
        if job_residues is None:
            return per_pass
        return (0.0 if mode in built else build.get(mode, 0.0)) + job_residues * per_pass / probe_residues

    def rank(mode: str) -> float:
        """The cached path's order: an int8 mode must win by INT8_MIN_GAIN, so it is built only if it can."""
        return cost(mode) * (INT8_MIN_GAIN if mode in INT8_MODES else 1.0)

    def make(mode: str):
        start = _clock()
        runner, context = variant(model, mode)
        contexts[mode] = context
        build[mode] = 0.0 if mode in ("fp32", "bf16") else _clock() - start  # no copy made: nothing to build
        built[mode] = runner
        return runner, context

    model.eval()
    reference = _forward(model, contextlib.nullcontext, encoded)
    if cached is not None:
        seconds, build = cached[0], dict(cached[1])
        order = sorted((m for m in candidates if cost(m) is not None), key=rank)
        for mode in order:  # check the guard on these weights, fastest first, until one passes
            if mode == "fp32":
                break
            runner, context = make(mode)
            check(mode, _forward(runner, context, encoded))
            if passes(cosine[mode], agree[mode]):
                break
            del built[mode], runner
    else:
        best = None
        timed = precision == "auto" or quantize == "int8"  # a speed comparison is asked for
        canary = tokenizer(probe[:1], padding=True, truncation=True, max_length=CANARY_RESIDUES + 2,
                           return_tensors="pt").to(device)
        canary_fp32 = None
        pending: dict[str, Callable[[], Any]] = {}  # modes to time, timed round-robin below
        for mode in candidates:
            runner, context = make(mode)
            if timed:  # a hopeless mode is dropped after one short pass, not a full probe pass
                canary_start = _clock()
                _forward(runner, context, canary)
                canary_time = _clock() - canary_start
                canary_fp32 = canary_time if mode == "fp32" else canary_fp32
                if mode != "fp32" and canary_time > ABANDON_FACTOR * canary_fp32:
                    seconds[mode] = None
                    notes.append(f"{mode}: {canary_time / canary_fp32:.0f}x slower than fp32 on a short pass "
                                 "on this machine; not probed further")
                    del built[mode], runner
                    continue
            first_start = _clock()
            result = _forward(runner, context, encoded)  # warm-up, and the guard's output
            first = _clock() - first_start
            if mode != "fp32":
                check(mode, result)
                if not passes(cosine[mode], agree[mode]):
                    seconds[mode] = None
                    notes.append(f"{mode}: fails the quality guard (embedding cosine {cosine[mode]:.5f}"
                                 f"{'' if agree[mode] else ', a predicted label changed'}; needs >= {GUARD_COSINE})")
                    del built[mode], runner
                    continue
            seconds[mode] = first  # an explicit mode needs only the guard; or clearly slower than the best
            if timed and (best is None or first <= ABANDON_FACTOR * best):
                pending[mode] = lambda runner=runner, context=context: _timed_forward(runner, context, encoded)
            elif timed and mode != precision:
                del built[mode]  # clearly slower: never chosen, its copy freed now
            best = first if best is None else min(best, first)
            del runner
        # Round-robin, best of PROBE_REPEATS each: a burst of other work on a shared machine then slows
        # every mode alike; timed one mode after another, a burst during one mode's passes could hand the
        # win (and the cached ranking) to another.
        timings: dict[str, list[float]] = {mode: [] for mode in pending}
        for _ in range(PROBE_REPEATS):
            for mode, run in pending.items():
                timings[mode].append(_time_forward(mode, run, 1))
        seconds.update({mode: min(times) for mode, times in timings.items()})
        del pending
        if cacheable:
            write_cache(key, {m: seconds.get(m) for m in candidates}, {m: build[m] for m in build if m in candidates})
    ok = {m: passes(cosine[m], agree[m]) for m in cosine}  # a mode not checked on these weights is not used
    ok["fp32"] = True
    precision_modes = {m: cost(m) for m in seconds if m not in INT8_MODES}
    if precision != "auto" and precision in precision_modes and not ok.get(precision, False):
        notes.append(f"precision {precision} fails the quality guard here; using fp32")
        chosen = "fp32"
    elif precision != "auto":
        chosen = precision
    else:
        chosen = choose(precision_modes, ok)
    base = chosen  # the precision mode, before int8
    if quantize == "int8":
        unit = ("per probe pass" if job_residues is None else
                f"estimated for the {job_residues:,} residues of this job, making the model included")
        chosen, int8_notes = _choose_int8(chosen, {m: cost(m) for m in seconds}, cosine, ok, unit)
        notes += int8_notes
    sample, refined = _share_sample(sequences), set()
    while chosen in fallback and chosen not in refined:  # delta and the fp32 reruns, on more proteins than the probe's
        refined.add(chosen)
        runner = built[chosen] if chosen in built else make(chosen)[0]
        fallback[chosen] = _sample_fallback(runner, contexts[chosen], model, tokenizer, sample, fallback[chosen][0])
        del runner
        if precision != "auto" and quantize != "int8":
            break  # a named mode is the user's choice: only its delta is refined
        before = chosen
        chosen = choose({m: cost(m) for m in seconds if m not in INT8_MODES}, ok) if precision == "auto" else base
        if quantize == "int8":
            chosen = _choose_int8(chosen, {m: cost(m) for m in seconds}, cosine, ok)[0]
        if chosen != before:
            notes.append(f"{before} would rerun {100 * fallback[before][1]:.0f} % of these proteins in fp32 "
                         f"(answers near a decision boundary); {chosen} is faster")
    plan = InferencePlan(chosen, seconds, cosine, {m: a for m, a in agree.items()}, cached is not None, notes,
                         build, (len(probe), max(len(s) for s in probe)), job_residues)
    for note in notes:
        log.warning(note)
    ready = apply_mode(model, chosen, built.get(chosen))
    if chosen in fallback:
        plan.fallback_delta, plan.fallback_share = fallback[chosen]
        plan.fallback_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        with_fp32_fallback(ready, model, plan.fallback_delta)  # labels near a boundary are fp32's
    return ready, plan


def _share_sample(sequences: Sequence[str]) -> list[str]:
    """The input's first proteins (as the job feeds them) up to :data:`FALLBACK_SAMPLE_TOKENS` residues, at least one."""
    sample: list[str] = []
    total = 0
    for sequence in sequences:
        if sample and total + len(sequence) > FALLBACK_SAMPLE_TOKENS:
            break
        sample.append(sequence)
        total += len(sequence)
    return sample


@torch.inference_mode()
def _sample_fallback(model, context, reference, tokenizer, sequences: list[str], delta: float) -> tuple[float, float]:
    """(delta, share) of :class:`Fp32Fallback` for ``model`` (a reduced mode, run under ``context``) on
    ``sequences`` (:func:`_share_sample`): ``delta`` raised to the largest logit change against the fp32
    ``reference`` seen on them (a 1-2 protein probe batch underestimates a heavy-tailed change: on the demo
    model the probe's delta varied 25x with the proteins picked), and the share of them whose answer lies
    within the fallback margin of a decision boundary: what the fallback would rerun in fp32."""
    from scilm.inference.batching import inference_batches
    from scilm.models.cls_only import cls_only_last_layer

    device = next(model.parameters()).device
    margins = []
    for batch in inference_batches([len(s) for s in sequences], None, device):
        encoded = tokenizer([sequences[i] for i in batch], padding=True, return_tensors="pt").to(device)
        with cls_only_last_layer(reference):
            expected = reference(**encoded).logits.float()
        with context(), cls_only_last_layer(model):
            logits = model(**encoded).logits.float()
        delta = max(delta, logit_change(expected, logits, encoded["attention_mask"]))
        margins.append(protein_margin(model.config, logits, encoded["attention_mask"]))
    return delta, _near_share(torch.cat(margins), delta) if margins else 0.0


def _choose_int8(chosen: str, seconds: dict[str, float | None], cosine: dict[str, float],
                 ok: dict[str, bool], unit: str = "per probe pass") -> tuple[str, list[str]]:
    """The fastest int8 mode that meets the guard and beats the ``chosen`` precision mode, else ``chosen``;
    with a note for each int8 mode refused. ``seconds``: what is compared (per probe pass, or a job's
    estimate: ``unit`` says which)."""
    notes = []
    chosen_time = seconds.get(chosen)
    winner, best = chosen, chosen_time
    for mode in (m for m in INT8_MODES if seconds.get(m) is not None or m in cosine):  # else noted at its canary
        int8_time = seconds.get(mode)
        if mode in cosine and not ok[mode]:
            notes.append(f"{mode}: fails the quality guard (embedding cosine {cosine[mode]:.5f}); not used")
        elif not ok.get(mode, False) or int8_time is None or best is None or int8_time * INT8_MIN_GAIN > best:
            notes.append(f"{mode} is not {INT8_MIN_GAIN:g}x faster than {winner} on this machine "
                         f"({_seconds(int8_time)} vs {_seconds(best)} {unit}); not used")
        else:
            winner, best = mode, int8_time
    return winner, notes


def _seconds(value: float | None) -> str:
    if value is None:
        return "untimed"
    return f"{value:.3g} s" if value < 1000 else f"{value:,.0f} s"


def plan_record(plan: InferencePlan) -> dict[str, Any]:
    """The plan as a JSON-ready dict."""
    return asdict(plan)
