"""Loading and saving Hugging Face models quietly, with one plain line about what differed.

transformers 5 prints a coloured "LOAD REPORT" table (raw ANSI codes in a log file) and progress
bars for loading and writing weights, even when the difference is the expected one: a new
classification head on a pre-trained encoder, an unused masked-LM head, a tied output layer.
Here those expected differences become one INFO line, and anything else (encoder weights missing
from a checkpoint, shapes that do not match) a WARNING that names the tensors. Download progress
from the hub stays visible.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside: transformers logs errors only and draws no load/save bars; the hub's download bars stay."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if hub_bars:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        elif not hub_bars:
            hub_utils.disable_progress_bars()


def _prefixes(names: Iterable[str], prefixes: tuple[str, ...]) -> list[str]:
    return [n for n in names if not n.startswith(prefixes)]


def summarize_loading(source: str, info: dict[str, list], new_head: tuple[str, ...] = (),
                      unused: tuple[str, ...] = (), tied: Iterable[str] = ()) -> str | None:
    """One line about what ``from_pretrained`` did not load as is, or None if it loaded everything.

    ``info`` is transformers' ``output_loading_info`` dict (``missing_keys``, ``unexpected_keys``,
    ``mismatched_keys``). Keys under ``new_head`` (initialised fresh: a new task head) and ``unused``
    (in the checkpoint, not in this architecture: e.g. ``lm_head.`` under a classifier) and ``tied``
    weights are expected and logged at INFO; any other difference is logged as a WARNING naming
    up to five tensors. Returns the message logged.
    """
    tied = set(tied)
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys", [])]
    real_missing = _prefixes(missing, new_head) if new_head else missing
    real_unexpected = _prefixes(unexpected, unused) if unused else unexpected
    real_mismatched = _prefixes(mismatched, new_head) if new_head else mismatched
    if real_missing or real_unexpected or real_mismatched:
        parts = []
        for label, names in (("not in the checkpoint (initialised at random)", real_missing),
                             ("in the checkpoint but not used", real_unexpected),
                             ("of another shape in the checkpoint (re-initialised)", real_mismatched)):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                parts.append(f"{len(names)} tensor(s) {label}: {', '.join(names[:5])}{more}")
        message = f"{source}: {'; '.join(parts)}"
        log.warning(message)
        return message
    expected = []
    head = sorted({k for k in missing + mismatched if k.startswith(new_head)}) if new_head else []
    if head:
        expected.append(f"new {', '.join(sorted({k.split('.')[0] for k in head}))} head ({len(head)} tensors) "
                        "initialised for this task")
    extra = [k for k in unexpected if unused and k.startswith(unused)]
    if extra:
        expected.append(f"{', '.join(sorted({k.split('.')[0] for k in extra}))} of the checkpoint not used "
                        f"({len(extra)} tensors)")
    if not expected:
        return None
    message = f"loaded {source}: {'; '.join(expected)}"
    log.info(message)
    return message


def tied_keys(model) -> set[str]:
    """Names of parameters tied to another (not saved separately), e.g. T5's ``lm_head.weight``."""
    keys = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys)


def load_pretrained(model_class: Any, source: str, *, new_head: tuple[str, ...] = (), unused: tuple[str, ...] = (),
                    **kwargs: Any) -> Any:
    """``model_class.from_pretrained(source, **kwargs)`` without transformers' report; see :func:`summarize_loading`.
    An ESM model comes back with its one-kernel GELU (:func:`scilm.models.fused_gelu.use_fused_gelu`).

    Raises ScilmError for damaged weights (a truncated or corrupt safetensors file, shapes that do not
    fit), OSError as ``from_pretrained`` does for a missing checkpoint.
    """
    from safetensors import SafetensorError

    from scilm.errors import ScilmError
    from scilm.models.fused_gelu import use_fused_gelu

    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    except (SafetensorError, RuntimeError, ValueError) as exc:  # a truncated or corrupt weights file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScilmError(f"--model {source}: cannot load its weights ({first})") from None
    summarize_loading(str(source), info, new_head=new_head, unused=unused, tied=tied_keys(model))
    use_fused_gelu(model)  # every checkpoint scilm loads; presets built in code call it themselves
    return model
