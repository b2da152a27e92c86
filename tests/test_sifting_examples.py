"""The sifting examples run end to end (each a few seconds on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "sifting"


@pytest.mark.parametrize("name", [pytest.param("plain_pytorch.py", marks=pytest.mark.slow),  # ~7 s each: CI runs them
                                  pytest.param("hf_trainer.py", marks=pytest.mark.slow),
                                  pytest.param("lightning.py", marks=pytest.mark.slow),
                                  pytest.param("original_api.py", marks=pytest.mark.slow)])
def test_example_runs(name):
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_original_api_port_changes_only_imports():
    """Each smart_sifting import of the original becomes the same line with scilm.sifting, nothing else."""
    docstring, code = (EXAMPLES / "original_api.py").read_text().split('"""', 2)[1:]
    original = [line.strip() for line in docstring.splitlines() if line.strip().startswith("from smart_sifting")]
    ported = [line for line in code.splitlines() if "scilm" in line]
    assert len(original) == 5 and ported == [line.replace("smart_sifting", "scilm.sifting") for line in original]
    assert "log_batch_data=False" in code and "batch_transforms=" in code  # the guide's step 2 and 4
