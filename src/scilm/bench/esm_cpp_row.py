"""One esm.cpp row of ``scilm bench inference``, run by the interpreter that has ``esm_cpp`` installed.

esm.cpp 0.2.1 (PyPI ``esm-cpp``, a C++ ESM-2 inference engine) requires numpy < 2, so it often lives in
its own virtual environment (``scripts/esm_cpp_venv.sh``); this file therefore imports nothing of scilm
and nothing beyond the standard library, numpy and ``esm_cpp``. Usage:
``python esm_cpp_row.py ARGS.json`` with ``{"mode": "fp32"|"int8", "weights": ".../model.safetensors",
"sequences": [...], "budget_s": s, "guard_n": k, "embeddings": "out.npy"}``. Prints one JSON line.

Speed: ``Model.forward_scheduled`` (esm.cpp's fastest call: packed variable-length batches with
length-aware bucketing) on chunks of 8 proteins in input order until ``budget_s`` passes; it returns
logits, i.e. it also runs the LM head, a small extra cost over an embedding. ``int8``: the engine's own
``quantize_weights()`` (W8A8 without SmoothQuant calibration: there is no calibration set offline).
Guard: mean-pooled last hidden states (``forward_with_hidden_states``) of the first ``guard_n`` proteins,
saved for the caller to compare with scilm's fp32 embeddings.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def main(path: str) -> None:
    """Run the row described by the JSON file at ``path``; print its result as one JSON line."""
    import esm_cpp

    args = json.loads(open(path, encoding="utf-8").read())
    start = time.perf_counter()
    model = esm_cpp.Model.load_from_safetensors(args["weights"])
    if args["mode"] == "int8":
        model.quantize_weights()
    tokenizer = esm_cpp.Tokenizer()
    sequences = args["sequences"]
    ready = time.perf_counter()
    done = 0
    while done < len(sequences):
        chunk = sequences[done : done + 8]
        model.forward_scheduled([np.asarray(tokenizer.encode(s), dtype=np.int32) for s in chunk])
        done += len(chunk)
        if time.perf_counter() - start > args["budget_s"]:
            break
    end = time.perf_counter()
    pooled = []  # the guard's embeddings, after the clock: not part of the speed
    for sequence in sequences[: args["guard_n"]]:
        _, hidden = model.forward_with_hidden_states(np.asarray(tokenizer.encode(sequence), dtype=np.int32))
        pooled.append(np.asarray(hidden[-1], dtype=np.float64)[1:-1].mean(axis=0))  # residues only
    np.save(args["embeddings"], np.asarray(pooled, dtype=np.float32))
    guard_s = time.perf_counter() - end
    residues = sum(len(s) for s in sequences[:done])
    print(json.dumps({"compute_residues_per_s": residues / (end - ready), "prepare_s": ready - start,
                      "guard_s": guard_s, "n_proteins": done, "residues": residues,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "isa": esm_cpp.current_isa(), "threads": model.num_threads,
                      "version": getattr(esm_cpp, "__version__", "?")}))


if __name__ == "__main__":
    main(sys.argv[1])
