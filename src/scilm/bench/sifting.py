"""``scilm bench sifting``: does loss-based sifting reach the baseline's accuracy in less wall time?

Sifting is for fine-tuning a model that can already tell easy from hard (a random model's losses
mean nothing). So every run here starts from the same warm start: ``esm2-tiny-mlm`` (esm2-tiny
pre-trained by masked LM on the training sequences), fine-tuned for ``warm_epochs`` on the task. From there
each run trains ``epochs`` more epochs with the same data, seed and learning rate: an unsifted
baseline, the relative policy at several betas, the reuse policy, and a random-dropping control at
the keep rate of the best relative run. Accuracy is recorded against *training* wall time
(evaluation excluded, scoring included).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scilm.bench.report import machine_name, markdown_table
from scilm.bench.runner import BUNDLED, run_train
from scilm.training.common import write_json_atomic


@dataclass(frozen=True)
class SiftingSettings:
    warm_epochs: float  # task epochs before the compared runs start
    epochs: float  # epochs of every compared run
    truncate: int
    batch_size: int = 16
    lr: float = 5e-4
    sift_history: int = 500
    sift_delay: int = 10
    betas: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    reuse_beta: float = 2.0
    warm_model: str = "esm2-tiny-mlm"

    @classmethod
    def for_mode(cls, quick: bool) -> "SiftingSettings":
        if quick:
            return cls(warm_epochs=1, epochs=3, truncate=256)
        return cls(warm_epochs=1, epochs=6, truncate=512)


def time_to_reach(history: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at the first evaluation with accuracy >= ``target`` (None if never)."""
    for row in history:
        if row["eval_accuracy"] >= target:
            return row["train_seconds"]
    return None


def summarise(name: str, metrics: dict[str, Any], target: float, baseline_seconds: float) -> dict[str, Any]:
    """One table row: keep rate, wall time, scoring share, final accuracy, time to the target."""
    sifting = metrics.get("sifting", {})
    reach = time_to_reach(metrics["eval_history"], target)
    total = metrics["eval_history"][-1]["train_seconds"] if metrics["eval_history"] else metrics["train_runtime_s"]
    return {
        "run": name,
        "keep_rate": sifting.get("keep_rate", 1.0),
        "train_seconds": total,
        "time_vs_baseline": total / baseline_seconds,
        "scoring_share": sifting.get("scoring_share", 0.0),
        "final_accuracy": metrics["eval_accuracy"],
        "seconds_to_target": reach,
        "time_to_target_vs_baseline": reach / baseline_seconds if reach is not None else None,
        "curve": [(row["train_seconds"], row["eval_accuracy"]) for row in metrics["eval_history"]],
    }


def run_sifting_bench(
    out: Path,
    quick: bool = False,
    settings: SiftingSettings | None = None,
    train_fasta: Path = BUNDLED / "train.fasta",
    valid_fasta: Path = BUNDLED / "valid.fasta",
    isolate: bool = True,
) -> str:
    """Run every configuration; write results.json, table.md and accuracy_vs_time.png."""
    settings = settings or SiftingSettings.for_mode(quick)
    out.mkdir(parents=True, exist_ok=True)
    common = {"data": str(train_fasta), "valid": str(valid_fasta), "truncate": settings.truncate,
              "batch_size": settings.batch_size, "lr": settings.lr, "seed": 0, "overwrite": True,
              "progress": False}

    # The warm start: a short fine-tune of the pretrained model on the task (cached between runs).
    warm_dir = out / "runs" / "warm"
    if not (warm_dir / "metrics.json").exists():
        run_train({**common, "model": settings.warm_model, "out": str(warm_dir), "epochs": settings.warm_epochs},
                  warm_dir, isolate)
    warm_model = str(warm_dir / "model")

    def run(name: str, switches: dict[str, Any]) -> dict[str, Any]:
        slug = name.replace(" ", "-").replace("=", "").replace(".", "_")
        config = {**common, **switches, "model": warm_model, "out": str(out / "runs" / slug),
                  "epochs": settings.epochs, "sift_history": settings.sift_history,
                  "sift_delay": settings.sift_delay}
        return run_train(config, out / "runs" / slug, isolate)

    raw: dict[str, dict[str, Any]] = {"baseline": run("baseline", {})}
    for beta in settings.betas:
        raw[f"relative beta={beta:g}"] = run(f"relative beta={beta:g}", {"sift_beta": beta})
    raw[f"reuse beta={settings.reuse_beta:g}"] = run(
        f"reuse beta={settings.reuse_beta:g}", {"sift_beta": settings.reuse_beta, "sift_policy": "reuse"})

    baseline = raw["baseline"]
    target = baseline["eval_accuracy"] - 0.01
    baseline_seconds = baseline["eval_history"][-1]["train_seconds"]
    rows = {name: summarise(name, metrics, target, baseline_seconds) for name, metrics in raw.items()}

    # The control drops at the keep rate of the best relative run, blind to the losses.
    relative = [r for name, r in rows.items() if name.startswith("relative")]
    best = min(relative, key=lambda r: r["time_to_target_vs_baseline"] or float("inf"))
    best_beta = float(best["run"].split("=")[1])
    control = f"random beta={best_beta:g}"
    raw[control] = run(control, {"sift_beta": best_beta, "sift_policy": "random"})
    rows[control] = summarise(control, raw[control], target, baseline_seconds)

    results = {
        "machine": machine_name(),
        "quick": quick,
        "settings": asdict(settings),
        "target_accuracy": target,
        "baseline_final_accuracy": baseline["eval_accuracy"],
        "warm_start_accuracy": json.loads((warm_dir / "metrics.json").read_text())["eval_accuracy"],
        "rows": list(rows.values()),
        "command": f"scilm bench sifting --out {out}" + (" --quick" if quick else ""),
    }
    write_json_atomic(out / "results.json", results)
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    table = markdown_table(
        ["run", "kept", "train time (s)", "vs baseline", "scoring share", "final accuracy",
         "time to baseline-1pt (s)", "vs baseline time"],
        [[r["run"], f"{r['keep_rate']:.2f}", f"{r['train_seconds']:.0f}", f"{r['time_vs_baseline']:.2f}x",
          f"{r['scoring_share']:.0%}", f"{r['final_accuracy']:.3f}", fmt(r["seconds_to_target"], ".0f"),
          fmt(r["time_to_target_vs_baseline"], ".2f")] for r in rows.values()],
    )
    header = (f"Machine: {results['machine']}. Every run starts from {settings.warm_model} (esm2-tiny pre-trained "
              f"by masked LM on the training sequences) fine-tuned "
              f"{settings.warm_epochs:g} epoch(s) on the task (accuracy {results['warm_start_accuracy']:.3f}), "
              f"then trains {settings.epochs:g} epochs, lr {settings.lr:g}, batch {settings.batch_size}, "
              f"truncation {settings.truncate}; sift delay {settings.sift_delay} steps, history "
              f"{settings.sift_history}. Target = baseline final accuracy - 1 point = {target:.3f}. "
              f"Train time excludes evaluation and includes scoring. Command: `{results['command']}`.\n\n")
    (out / "table.md").write_text(header + table + "\n", encoding="utf-8")
    plot_curves(out / "accuracy_vs_time.png", list(rows.values()), target)
    return header + table


def plot_curves(path: Path, rows: list[dict[str, Any]], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        xs, ys = zip(*row["curve"]) if row["curve"] else ((), ())
        style = "k-o" if row["run"] == "baseline" else ("--x" if row["run"].startswith("random") else "-o")
        ax.plot(xs, ys, style, label=row["run"], markersize=4)
    ax.axhline(target, color="grey", linestyle=":", label="baseline final - 1 pt")
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
