"""Saved models carry the hub's tensor names (issue 16).

transformers 5 maps old ``LayerNorm.gamma``/``LayerNorm.beta`` names to ``LayerNorm.weight/bias`` on
load and, by default, maps them *back* on save (``save_original_format=True``), so an ESM-2 saved by
``save_pretrained`` holds ``...LayerNorm.gamma`` although the hub's ESM-2 checkpoints and the model's
own parameters say ``LayerNorm.weight``. Tools that read safetensors directly (esm.cpp, older
transformers, plain ``safetensors``) then miss those tensors. Every scilm save path goes through
:func:`save_model` (the model's own names); :func:`hub_tensor_names` repairs a directory written by
something scilm does not call directly (the Trainer's sharded FSDP/DeepSpeed save).
"""

from __future__ import annotations

import os
from pathlib import Path

# old name -> hub name (transformers' "legacy" renaming, conversion_mapping.py)
LEGACY_RENAMES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def save_model(model, directory: str | Path, **kwargs) -> None:
    """``model.save_pretrained(directory)`` with the model's own (= the hub's) tensor names.

    Raises what ``save_pretrained`` raises (OSError for a full disk).
    """
    model.save_pretrained(str(directory), save_original_format=False, **kwargs)
    hub_tensor_names(directory)  # a belt for transformers versions that ignore the flag


# ESM-2's rotary frequencies: the hub's checkpoints hold one copy per layer (fair-esm's module layout),
# transformers 5 keeps one shared module and writes it once, or, reversing its renaming, under a
# literal "encoder.layer.*." name. Tools that read safetensors directly (esm.cpp) need the per-layer names.
ROTARY_ARTIFACT = "encoder.layer.*.attention.self.rotary_embeddings.inv_freq"
ROTARY_SHARED = "rotary_embeddings.inv_freq"
ROTARY_PER_LAYER = "encoder.layer.{}.attention.self.rotary_embeddings.inv_freq"


def hub_name(key: str) -> str:
    """``key`` with a legacy ``LayerNorm.gamma/beta`` suffix replaced by ``LayerNorm.weight/bias`` (the
    rotary names are :func:`hub_rotary_names`' business)."""
    for old, new in LEGACY_RENAMES:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _rotary_prefix(key: str) -> str | None:
    """``"esm."`` (or ``""``) when ``key`` is ESM's shared rotary buffer or transformers' ``*`` artefact."""
    for suffix in (ROTARY_ARTIFACT, ROTARY_SHARED):
        if key.endswith(suffix) and "encoder.layer." not in key[: -len(suffix)]:  # not already per layer
            return key[: -len(suffix)]
    return None


def hub_rotary_names(key: str, n_layers: int | None) -> list[str]:
    """The hub's names for ``key``: ESM's one rotary buffer becomes ``<prefix>encoder.layer.{i}.attention.self
    .rotary_embeddings.inv_freq`` for each of the ``n_layers`` layers (as in facebook/esm2_* checkpoints);
    any other key is ``[hub_name(key)]``. Without ``n_layers`` (no config.json) the key is left as is."""
    prefix = _rotary_prefix(key)
    if prefix is None or not n_layers:
        return [hub_name(key)]
    return [prefix + ROTARY_PER_LAYER.format(i) for i in range(n_layers)]


def hub_tensor_names(directory: str | Path) -> list[Path]:
    """Rewrite each ``*.safetensors`` in ``directory`` that has legacy names or ESM's one shared rotary buffer
    (:func:`hub_rotary_names`), atomically (the old file is
    replaced only once the new one is whole); the ``model.safetensors.index.json`` of a sharded save is
    rewritten to match. Returns the files rewritten. Values and metadata are unchanged.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = Path(directory)
    n_layers = _esm_layers(directory)
    rewritten = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
            if all(hub_rotary_names(k, n_layers) == [k] for k in keys):
                continue
            metadata = handle.metadata()
            tensors = {}
            for k in keys:
                value = handle.get_tensor(k)
                for name in hub_rotary_names(k, n_layers):
                    tensors[name] = value.clone()  # safetensors refuses tensors sharing memory
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        rewritten.append(path)
    index = directory / "model.safetensors.index.json"
    if rewritten and index.exists():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {name: v for k, v in data.get("weight_map", {}).items()
                              for name in hub_rotary_names(k, n_layers)}
        tmp = index.with_name(f".{index.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, index)
    return rewritten


def _esm_layers(directory: Path) -> int | None:
    """``num_hidden_layers`` of an ESM ``config.json`` in ``directory``, else None (not an ESM model)."""
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return int(config["num_hidden_layers"]) if config.get("model_type") == "esm" else None
