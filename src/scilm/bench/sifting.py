"""``scilm bench sifting``: does loss-based sifting reach the baseline's accuracy in less wall time?

Sifting is for fine-tuning a model that can already tell easy from hard (a random model's losses
mean nothing). So every run here starts from the same warm start: ``esm2-tiny-mlm`` (esm2-tiny
pre-trained by masked LM on the training sequences), fine-tuned for ``warm_epochs`` on the task. From there
each run trains ``epochs`` more epochs with the same data, seed and learning rate: an unsifted
baseline, the relative policy at several betas, the reuse policy, and two blind controls that drop
at the same rates: ``random`` at the best relative beta and ``reuse-random`` at the reuse beta.
Accuracy is recorded against *training* wall time (evaluation excluded, scoring included). With
several seeds, each row's curve is the mean over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scilm.bench.report import machine_name, markdown_table
from scilm.bench.runner import BUNDLED, run_train
from scilm.training.common import write_json_atomic

TIME_BAR = 0.65  # the bar: baseline-1pt within this share of the baseline's wall time


@dataclass(frozen=True)
class SiftingSettings:
    """What the sifting benchmark runs: data, model, epochs, the betas tried and the control runs."""
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
    seeds: tuple[int, ...] = (0,)  # data order and selection; the warm start is always seed 0's

    @classmethod
    def for_mode(cls, quick: bool, epochs: float | None = None, seeds: tuple[int, ...] = ()) -> "SiftingSettings":
        """The settings of a ``quick`` (a few minutes) or full run."""
        settings = cls(warm_epochs=1, epochs=3, truncate=256) if quick else cls(warm_epochs=1, epochs=6, truncate=512)
        if epochs is not None:
            settings = replace(settings, epochs=epochs)
        return replace(settings, seeds=tuple(seeds)) if seeds else settings


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds at the first (seconds, accuracy) point with accuracy >= ``target`` (None if never)."""
    return next((seconds for seconds, accuracy in curve if accuracy >= target), None)


def mean_curve(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(train seconds, eval accuracy) per evaluation, averaged over the runs (seeds) point by point."""
    histories = [m["eval_history"] for m in runs]
    points = min(len(h) for h in histories)
    return [(statistics.fmean(h[i]["train_seconds"] for h in histories),
             statistics.fmean(h[i]["eval_accuracy"] for h in histories)) for i in range(points)]


def summarise(name: str, runs: list[dict[str, Any]], target: float, baseline_seconds: float) -> dict[str, Any]:
    """One table row over seeds: keep rate, wall time, scoring share, final accuracy, time to the target."""
    curve = mean_curve(runs)
    total = curve[-1][0] if curve else statistics.fmean(m["train_runtime_s"] for m in runs)
    finals = [m["eval_accuracy"] for m in runs]
    reach = time_to_reach(curve, target)
    return {
        "run": name,
        "keep_rate": statistics.fmean(m.get("sifting", {}).get("keep_rate", 1.0) for m in runs),
        "train_seconds": total,
        "time_vs_baseline": total / baseline_seconds,
        "scoring_share": statistics.fmean(m.get("sifting", {}).get("scoring_share", 0.0) for m in runs),
        "final_accuracy": statistics.fmean(finals),
        "final_accuracy_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "final_accuracy_per_seed": finals,
        "seconds_to_target": reach,
        "time_to_target_vs_baseline": reach / baseline_seconds if reach is not None else None,
        "curve": curve,
    }


def _sooner(row: dict[str, Any]) -> tuple[float, float]:
    """Sort key: earliest to the target, then highest final accuracy."""
    reach = row["time_to_target_vs_baseline"]
    return (reach if reach is not None else float("inf"), -row["final_accuracy"])


def verdict(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best sifting run, its blind control, and whether it meets the time bar and beats the control."""
    best = min((r for name, r in rows.items() if name.startswith(("relative", "reuse "))), key=_sooner)
    control_name = ("reuse-random " if best["run"].startswith("reuse") else "random ") + best["run"].split(" ")[1]
    control = rows[control_name]
    reach = best["time_to_target_vs_baseline"]
    return {"best_run": best["run"], "control": control_name,
            "meets_time_bar": reach is not None and reach <= TIME_BAR,
            "beats_control": _sooner(best) < _sooner(control)}


def hardest_third(model_dir: str, train_fasta: Path, truncate: int) -> dict[str, Any]:
    """Who the highest-loss third of the training set is under ``model_dir`` (what sifting keeps most of).

    Compares it with the other two thirds: mean loss, share of each label, share of proteins longer
    than the truncation. One inference pass over the training set.
    """
    import torch

    from scilm.data.protein import read_proteins
    from scilm.inference.predict import predict_proteins
    from scilm.models.protein import load_trained_classifier

    model, tokenizer = load_trained_classifier(model_dir)
    records = [r for r in read_proteins(train_fasta) if r.label]
    with torch.inference_mode():
        probabilities = predict_proteins(model, tokenizer, [r.sequence for r in records], 64, truncate)
    losses = torch.tensor([-math.log(max(p[r.label], 1e-12)) for p, r in zip(probabilities, records)])
    order = losses.argsort(descending=True).tolist()
    labels = sorted({r.label for r in records})

    def describe(indices: list[int]) -> dict[str, Any]:
        return {"mean_loss": losses[indices].mean().item(),
                "longer_than_truncation": statistics.fmean(len(records[i].sequence) > truncate for i in indices),
                "label_share": {label: statistics.fmean(records[i].label == label for i in indices)
                                for label in labels}}

    cut = len(order) // 3
    correct = [max(p, key=p.get) == r.label for p, r in zip(probabilities, records)]
    return {"train_accuracy": statistics.fmean(correct), "hardest_third": describe(order[:cut]),
            "rest": describe(order[cut:])}


def run_sifting_bench(
    out: Path,
    quick: bool = False,
    settings: SiftingSettings | None = None,
    train_fasta: Path = BUNDLED / "train.fasta",
    valid_fasta: Path = BUNDLED / "valid.fasta",
    isolate: bool = True,
    command: str | None = None,
) -> str:
    """Run every configuration for every seed; write results.json, table.md and accuracy_vs_time.png."""
    settings = settings or SiftingSettings.for_mode(quick)
    out.mkdir(parents=True, exist_ok=True)
    common = {"data": str(train_fasta), "valid": str(valid_fasta), "truncate": settings.truncate,
              "batch_size": settings.batch_size, "lr": settings.lr, "overwrite": True, "progress": False}

    # The warm start: a short fine-tune of the pretrained model on the task (cached between runs).
    warm_dir = out / "runs" / "warm"
    if not (warm_dir / "metrics.json").exists():
        run_train({**common, "seed": 0, "model": settings.warm_model, "out": str(warm_dir),
                   "epochs": settings.warm_epochs}, warm_dir, isolate)
    warm_model = str(warm_dir / "model")

    def run(name: str, switches: dict[str, Any]) -> list[dict[str, Any]]:
        """The row ``name`` once per seed (a finished run with the same settings is re-used)."""
        slug = name.replace(" ", "-").replace("=", "").replace(".", "_")
        metrics = []
        for seed in settings.seeds:
            folder = out / "runs" / (slug if seed == 0 else f"{slug}-seed{seed}")
            config = {**common, **switches, "seed": seed, "model": warm_model, "out": str(folder),
                      "epochs": settings.epochs, "sift_history": settings.sift_history,
                      "sift_delay": settings.sift_delay}
            metrics.append(run_train(config, folder, isolate))
        return metrics

    reuse_name = f"reuse beta={settings.reuse_beta:g}"
    raw: dict[str, list[dict[str, Any]]] = {"baseline": run("baseline", {})}
    for beta in settings.betas:
        raw[f"relative beta={beta:g}"] = run(f"relative beta={beta:g}", {"sift_beta": beta})
    raw[reuse_name] = run(reuse_name, {"sift_beta": settings.reuse_beta, "sift_policy": "reuse"})

    baseline_curve = mean_curve(raw["baseline"])
    target = baseline_curve[-1][1] - 0.01
    baseline_seconds = baseline_curve[-1][0]
    rows = {name: summarise(name, metrics, target, baseline_seconds) for name, metrics in raw.items()}

    # Blind controls: random dropping at the best relative run's beta, and the reuse policy's twin.
    best_relative = min((r for name, r in rows.items() if name.startswith("relative")), key=_sooner)
    best_beta = float(best_relative["run"].split("=")[1])
    controls = {f"random beta={best_beta:g}": {"sift_beta": best_beta, "sift_policy": "random"},
                f"reuse-random beta={settings.reuse_beta:g}": {"sift_beta": settings.reuse_beta,
                                                                "sift_policy": "reuse-random"}}
    for name, switches in controls.items():
        raw[name] = run(name, switches)
        rows[name] = summarise(name, raw[name], target, baseline_seconds)

    results = {
        "machine": machine_name(),
        "quick": quick,
        "settings": asdict(settings),
        "target_accuracy": target,
        "baseline_final_accuracy": baseline_curve[-1][1],
        "warm_start_accuracy": json.loads((warm_dir / "metrics.json").read_text())["eval_accuracy"],
        "verdict": verdict(rows),
        "hardest_third": {"warm start": hardest_third(warm_model, train_fasta, settings.truncate),
                          "baseline end": hardest_third(str(out / "runs" / "baseline" / "model"), train_fasta,
                                                        settings.truncate)},
        "rows": list(rows.values()),
        "command": command or f"scilm bench sifting --out {out}" + (" --quick" if quick else ""),
    }
    write_json_atomic(out / "results.json", results)
    text = report(results, settings)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    plot_curves(out / "accuracy_vs_time.png", list(rows.values()), target)
    return text


def report(results: dict[str, Any], settings: SiftingSettings) -> str:
    """table.md: the settings, one row per run, and the verdict against the issue's bar."""
    rows = results["rows"]
    several = len(settings.seeds) > 1
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    accuracy = (lambda r: f"{r['final_accuracy']:.3f} ± {r['final_accuracy_sd']:.3f}") if several else \
        (lambda r: f"{r['final_accuracy']:.3f}")
    table = markdown_table(
        ["run", "kept", "train time (s)", "vs baseline", "scoring share", "final accuracy",
         "time to baseline-1pt (s)", "vs baseline time"],
        [[r["run"], f"{r['keep_rate']:.2f}", f"{r['train_seconds']:.0f}", f"{r['time_vs_baseline']:.2f}x",
          f"{r['scoring_share']:.0%}", accuracy(r), fmt(r["seconds_to_target"], ".0f"),
          fmt(r["time_to_target_vs_baseline"], ".2f")] for r in rows],
    )
    seeds = (f"mean of seeds {', '.join(map(str, settings.seeds))} (± sd of the final accuracy)" if several
             else f"seed {settings.seeds[0]}")
    header = (f"Machine: {results['machine']}. Every run starts from {settings.warm_model} (esm2-tiny pre-trained "
              f"by masked LM on the training sequences) fine-tuned "
              f"{settings.warm_epochs:g} epoch(s) on the task (accuracy {results['warm_start_accuracy']:.3f}), "
              f"then trains {settings.epochs:g} epochs, lr {settings.lr:g}, batch {settings.batch_size}, "
              f"truncation {settings.truncate}; sift delay {settings.sift_delay} steps, history "
              f"{settings.sift_history}; {seeds}. Target = baseline final accuracy - 1 point = "
              f"{results['target_accuracy']:.3f}. Train time excludes evaluation and includes scoring. "
              f"Command: `{results['command']}`.")
    v = results["verdict"]
    best = next(r for r in rows if r["run"] == v["best_run"])
    summary = (f"Best sifting run: {v['best_run']}, baseline-1pt at "
               f"{fmt(best['time_to_target_vs_baseline'], '.2f')} of the baseline's time (bar {TIME_BAR}): "
               f"{'met' if v['meets_time_bar'] else 'NOT met'}; against its blind control ({v['control']}): "
               f"{'beats it' if v['beats_control'] else 'does NOT beat it'}.")
    return f"{header}\n\n{table}\n\n{summary}\n\n{describe_hardest(results['hardest_third'], settings.truncate)}"


def describe_hardest(analysis: dict[str, dict[str, Any]], truncate: int) -> str:
    """One line per model: what the highest-loss third of the training set looks like next to the rest."""
    lines = ["What loss-based selection keeps most of: the highest-loss third of the training set against "
             "the other two thirds."]
    for model, a in analysis.items():
        hard, rest = a["hardest_third"], a["rest"]
        shares = ", ".join(f"{label} {hard['label_share'][label]:.0%} vs {rest['label_share'][label]:.0%}"
                           for label in hard["label_share"])
        lines.append(f"- {model} (training accuracy {a['train_accuracy']:.3f}): mean loss {hard['mean_loss']:.2f} vs "
                     f"{rest['mean_loss']:.2f}; {shares}; longer than {truncate} residues "
                     f"{hard['longer_than_truncation']:.0%} vs {rest['longer_than_truncation']:.0%}.")
    return "\n".join(lines)


def plot_curves(path: Path, rows: list[dict[str, Any]], target: float) -> None:
    """A PNG of validation accuracy against training seconds and against samples read, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        xs, ys = zip(*row["curve"]) if row["curve"] else ((), ())
        style = "k-o" if row["run"] == "baseline" else ("--x" if "random" in row["run"] else "-o")
        ax.plot(xs, ys, style, label=row["run"], markersize=4)
    ax.axhline(target, color="grey", linestyle=":", label="baseline final - 1 pt")
    ax.set_xlabel("training wall time (s, evaluation excluded)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
