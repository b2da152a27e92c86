"""What every benchmark writes: the machine's name, a Markdown table, a PNG chart."""

from __future__ import annotations

import os
import platform
import textwrap
from pathlib import Path
from typing import Any

import psutil
import torch


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` shows it (``model name`` of /proc/cpuinfo on Linux), e.g.
    'AMD EPYC'; the architecture (``platform.machine()``) where the OS does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return f"{value.strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name() -> str:
    """e.g. 'AMD EPYC (x86_64) Linux, 2 CPU cores, 23 GiB RAM, no GPU, torch 2.13.0+cpu'."""
    cores = os.cpu_count() or 0
    ram = psutil.virtual_memory().total / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = cpu_model()
    return f"{cpu} {platform.system()}, {cores} CPU cores, {ram:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table: ``header`` then ``rows`` (cells rendered with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save_bar_chart(path: Path, rows: list[dict[str, Any]], cost_model: str) -> None:
    """Three panels: time per epoch, peak memory, eval accuracy, one bar per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [textwrap.fill(r["configuration"], 13) for r in rows]
    panels = [("cost_epoch_time_s", f"time / epoch, {cost_model} (s)"),
              ("cost_peak_memory_mb", f"peak memory, {cost_model} (MB)"),
              ("eval_accuracy", "eval accuracy, esm2-tiny")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, title) in zip(axes, panels):
        values = [r[key] for r in rows]
        ax.bar(range(len(rows)), values, color=["#777"] + ["#3b7dd8"] * (len(rows) - 2) + ["#d8663b"])
        ax.set_xticks(range(len(rows)), names, fontsize=8)
        ax.set_title(title)
        if key == "eval_accuracy":
            ax.set_ylim(0.5, 1.0)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3f}" if key == "eval_accuracy" else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
