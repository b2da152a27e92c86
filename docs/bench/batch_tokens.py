"""Residues/s of ``embed_proteins`` in fp32 under four batch rules, alternating rounds (VM noise hits all).

    python docs/bench/batch_tokens.py [SHAPE] [N_PROTEINS] [MAX_RESIDUES]   # esm2-35m 64 512

Rules: ``bs16`` (length-sorted batches of 16, scilm's rule before), ``cap2048`` / ``cap1024``
(:func:`scilm.inference.batching.tight_batches`: at most 16 proteins, that many padded tokens, under
10 % padding; 2,048 is scilm's CPU rule), ``one`` (one protein per forward). Random weights of the
shape, the first N DeepLoc-1 validation proteins (bundled) cut to MAX_RESIDUES. Prints residues/s per
round. Run alone on the machine.
"""

import sys
import time

import torch
from transformers import EsmModel

import scilm.inference.embed as embed_module
from scilm.bench.inference import DEEPLOC_VALID
from scilm.data.protein import read_proteins
from scilm.inference import embed_proteins
from scilm.inference.batching import length_sorted_batches, tight_batches
from scilm.models.fused_gelu import use_fused_gelu
from scilm.models.protein import esm2_config, esm2_tokenizer

RULES = {
    "bs16": lambda lengths, size, device: list(length_sorted_batches(lengths, size)),
    "cap2048": lambda lengths, size, device: tight_batches(lengths, max_tokens=2048, max_size=size),
    "cap1024": lambda lengths, size, device: tight_batches(lengths, max_tokens=1024, max_size=size),
    "one": lambda lengths, size, device: [[i] for batch in length_sorted_batches(lengths, size) for i in batch],
}


def main(shape: str = "esm2-35m", n: int = 64, cut: int = 512, rounds: int = 3) -> None:
    torch.manual_seed(0)
    model = EsmModel(esm2_config(shape), add_pooling_layer=False).eval()
    use_fused_gelu(model)
    tokenizer = esm2_tokenizer()
    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None, unique_ids=False)[:n]
    sequences = [r.sequence[:cut] for r in records]
    residues = sum(map(len, sequences))
    embed_proteins(model, tokenizer, sequences[:8], batch_size=16)  # warm-up
    speeds: dict[str, list[int]] = {rule: [] for rule in RULES}
    for _ in range(rounds):
        for rule, batches in RULES.items():
            embed_module.inference_batches = batches
            start = time.perf_counter()
            embed_proteins(model, tokenizer, sequences, batch_size=16)
            speeds[rule].append(round(residues / (time.perf_counter() - start)))
    print(f"{shape}, {n} proteins cut to {cut} ({residues} residues), residues/s per round: {speeds}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(args[:1] or ["esm2-35m"]), *[int(a) for a in args[1:3]])
