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


# transformers 5's reverse of its ESM rotary renaming writes a literal "*" into the saved name
ROTARY_ARTIFACT = ("encoder.layer.*.attention.self.rotary_embeddings.inv_freq", "rotary_embeddings.inv_freq")


def hub_name(key: str) -> str:
    """``key`` with a legacy ``LayerNorm.gamma/beta`` suffix replaced by ``LayerNorm.weight/bias`` (and the
    ``encoder.layer.*.`` rotary artefact by the model's own ``rotary_embeddings.inv_freq``)."""
    if key.endswith(ROTARY_ARTIFACT[0]):
        return key[: -len(ROTARY_ARTIFACT[0])] + ROTARY_ARTIFACT[1]
    for old, new in LEGACY_RENAMES:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def hub_tensor_names(directory: str | Path) -> list[Path]:
    """Rewrite each ``*.safetensors`` in ``directory`` that has legacy names, atomically (the old file is
    replaced only once the new one is whole); the ``model.safetensors.index.json`` of a sharded save is
    rewritten to match. Returns the files rewritten. Tensors and metadata are unchanged.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = Path(directory)
    rewritten = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
            if all(hub_name(k) == k for k in keys):
                continue
            metadata = handle.metadata()
            tensors = {hub_name(k): handle.get_tensor(k) for k in keys}
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
        data["weight_map"] = {hub_name(k): v for k, v in data.get("weight_map", {}).items()}
        tmp = index.with_name(f".{index.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, index)
    return rewritten
