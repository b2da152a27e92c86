"""The CLI surface: `scilm train`'s options are TrainConfig's fields, every default shown, --version."""

from __future__ import annotations

import dataclasses
import re
from importlib import metadata

import pytest

from scilm.training.config import TrainConfig


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"scilm {metadata.version('scilm')}"


def option_blocks(text: str) -> dict[str, str]:
    """``--flag`` -> its help, wrapped lines joined."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (--[a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line.strip()
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
    return blocks


def test_train_options_are_the_config_fields_with_their_defaults(run_cli):
    result = run_cli("train", "--help")
    assert result.exit_code == 0
    text = result.stdout
    blocks = option_blocks(text)
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "extra" and not f.metadata.get("internal")]
    for field in fields:
        flag = "--" + field.name.replace("_", "-")
        line = blocks.get(flag)
        assert line is not None, f"{flag} missing from --help"
        if field.name == "data":
            continue
        expected = "none" if field.default is None else (str(field.default).lower() if isinstance(field.default, bool)
                                                         else str(field.default))
        assert f"[default: {expected}]" in line, (flag, line)
    # word defaults used to vanish (eaten as markup) and leave " ."
    for word in ("esm2-tiny", "membrane", "auto", "relative", "runs/scilm"):
        assert f"[default: {word}]" in " ".join(blocks.values())
    assert not re.search(r"\S \.\s*$", text, flags=re.M)
    options = set(blocks)
    assert options == {"--config", "--help"} | {"--" + f.name.replace("_", "-") for f in fields}


@pytest.mark.slow  # a real process: ~10 s
def test_a_run_from_the_shipped_model_says_one_plain_line_about_the_new_head(tmp_path):
    """transformers' coloured LOAD REPORT table, its progress bars and absl's INFO lines stay out."""
    import subprocess
    import sys

    from conftest import DEEPLOC_TRAIN, DEEPLOC_VALID, deeploc_slice

    train = deeploc_slice(tmp_path / "t.fasta", DEEPLOC_TRAIN, 8, 40)
    valid = deeploc_slice(tmp_path / "v.fasta", DEEPLOC_VALID, 4, 40)
    result = subprocess.run([sys.executable, "-m", "scilm", "train", "--data", str(train), "--valid", str(valid),
                             "--model", "esm2-tiny-mlm", "--max-steps", "2", "--no-progress",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert "\x1b[" not in said and "LOAD REPORT" not in said and "Loading weights" not in said
    assert "Writing model shards" not in said and "Using default tokenizer" not in said
    assert said.count("new classifier head (4 tensors) initialised for this task; lm_head of the checkpoint "
                      "not used (5 tensors)") == 1
    assert "SIGTERM" not in said
