"""Seed check of the reuse policy against its blind control (docs/bench/sifting/reuse_seeds.md).

Same warm start and settings as ``scilm bench sifting --quick``; for seeds 0, 1, 2: an unsifted
baseline, reuse at beta 1 and 2, and reuse-random (the same keep rates and 1/p weights, blind to
the losses) at beta 2. Rows whose config is unchanged are re-used (delete a run folder to re-measure).

    python scripts/sifting_seeds.py --out runs/sifting-seeds     # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scilm.bench.report import machine_name, markdown_table
from scilm.bench.runner import BUNDLED, run_train
from scilm.bench.sifting import time_to_reach

RUNS = [("baseline", {}), ("reuse beta=1", {"sift_beta": 1.0, "sift_policy": "reuse"}),
        ("reuse beta=2", {"sift_beta": 2.0, "sift_policy": "reuse"}),
        ("reuse-random beta=2", {"sift_beta": 2.0, "sift_policy": "reuse-random"})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sifting-seeds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out, seeds = args.out.resolve(), args.seeds
    common = {"data": str(BUNDLED / "train.fasta"), "valid": str(BUNDLED / "valid.fasta"), "truncate": 256,
              "batch_size": 16, "lr": 5e-4, "overwrite": True, "progress": False}
    warm = out / "warm"
    run_train({**common, "seed": 0, "model": "esm2-tiny-mlm", "out": str(warm), "epochs": 1}, warm)
    rows = []
    for seed in seeds:
        results = {}
        for name, switches in RUNS:
            folder = out / f"s{seed}-{name.replace(' beta=', '_b').replace(' ', '_')}"
            results[name] = run_train({**common, **switches, "seed": seed, "model": str(warm / "model"),
                                       "out": str(folder), "epochs": 3, "sift_history": 500, "sift_delay": 10},
                                      folder)
        baseline = results["baseline"]
        target = baseline["eval_accuracy"] - 0.01
        total = baseline["eval_history"][-1]["train_seconds"]
        for name, metrics in results.items():
            reach = time_to_reach(metrics["eval_history"], target)
            rows.append([seed, name, f"{metrics.get('sifting', {}).get('keep_rate', 1.0):.2f}",
                         f"{metrics['eval_history'][-1]['train_seconds'] / total:.2f}x",
                         f"{metrics['eval_accuracy']:.3f}", f"{target:.3f}",
                         "never" if reach is None else f"{reach / total:.2f}"])
    table = markdown_table(["seed", "run", "kept", "train time vs baseline", "final accuracy", "target",
                            "time to target vs baseline"], rows)
    text = (f"Machine: {machine_name()}. Warm start esm2-tiny-mlm + 1 epoch, then 3 epochs, truncation 256, "
            f"batch 16, lr 5e-4. Target = that seed's baseline final accuracy - 1 point. "
            f"Command: `python scripts/sifting_seeds.py --out {out}`.\n\n{table}\n")
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
