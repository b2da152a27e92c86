"""What the benchmarks share: a row is a ``scilm train --config`` run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from scilm.data.protein import BUNDLED_DEEPLOC1, ProteinRecord
from scilm.errors import ScilmError

BUNDLED = BUNDLED_DEEPLOC1  # the bundled DeepLoc-1 slice (train.fasta, valid.fasta)


def run_train(config: dict[str, Any], workdir: Path, isolate: bool = True) -> dict[str, Any]:
    """Write ``workdir/config.yaml`` and train from it; returns the run's metrics.

    ``isolate`` runs ``scilm train --config`` in a fresh process, so peak memory is the run's own;
    in-process is faster (tests). Either way the YAML re-runs the row alone. A row whose identical
    YAML already finished is not run again (delete its folder to re-measure it).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    metrics_path = Path(config["out"]) / "metrics.json"
    if config_path.exists() and config_path.read_text(encoding="utf-8") == text and metrics_path.exists():
        return json.loads(metrics_path.read_text())  # this exact row already ran: re-use it
    config_path.write_text(text, encoding="utf-8")
    if not isolate:
        from scilm.training import load_config, train

        return train(load_config(config_path, {}))
    command = [sys.executable, "-m", "scilm", "train", "--config", str(config_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    (workdir / "log.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScilmError(f"bench run {workdir.name} failed: {tail} (log: {workdir / 'log.txt'})")
    return json.loads((Path(config["out"]) / "metrics.json").read_text())


def write_fasta(path: Path, records: list[ProteinRecord]) -> Path:
    """Labelled records back to DeepLoc FASTA (membrane/soluble headers)."""
    code = {"membrane": "Cell.membrane-M", "soluble": "Cytoplasm-S"}
    path.write_text("".join(f">{r.id} {code[r.label]}\n{r.sequence}\n" for r in records), encoding="utf-8")
    return path
