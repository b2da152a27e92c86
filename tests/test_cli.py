"""The CLI surface: `scilm train`'s options are the recipes' settings, every default shown, --version."""

from __future__ import annotations

import dataclasses
import re
from importlib import metadata

import pytest



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


def _shown(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_train_options_are_every_recipes_settings_with_their_defaults(run_cli):
    from scilm.training.config import all_settings
    from scilm.training.recipes import RECIPES

    result = run_cli("train", "--help")
    assert result.exit_code == 0
    text = result.stdout
    blocks = option_blocks(text)
    for info in all_settings():
        flag = "--" + info.name.replace("_", "-")
        line = blocks.get(flag)
        assert line is not None, f"{flag} missing from --help"
        if info.name in ("data", "task"):
            continue
        shown = {task: _shown(value) for task, value in info.defaults.items()}
        common = max(set(shown.values()), key=list(shown.values()).count)
        assert f"[default: {common}" in line, (flag, line)
        for task, value in shown.items():  # a recipe whose default differs is named with its own
            assert value == common or f"{task}: {value}" in line, (flag, task, line)
        if len(info.defaults) < len(RECIPES):  # a setting of some recipes only says which
            assert f"(for {', '.join(info.defaults)})" in line, (flag, line)
    for task, recipe in RECIPES.items():  # every task listed with its summary
        assert f"{task}: {recipe.summary.split()[0]}" in text
    for word in ("esm2-tiny", "auto", "relative", "runs/scilm"):  # word defaults used to vanish as markup
        assert f"[default: {word}" in " ".join(blocks.values())
    assert not re.search(r"\S \.\s*$", text, flags=re.M)
    assert set(blocks) == {"--config", "--help"} | {"--" + i.name.replace("_", "-") for i in all_settings()}


def test_pretrain_options_are_the_mlm_recipes_settings(run_cli):
    import dataclasses

    from scilm.training.recipes import RECIPES

    blocks = option_blocks(run_cli("pretrain", "--help").stdout)
    config = RECIPES["mlm"].config
    fields = [f for f in dataclasses.fields(config) if not f.metadata.get("internal") and f.name != "task"]
    assert set(blocks) == {"--config", "--help"} | {"--" + f.name.replace("_", "-") for f in fields}
    assert "[default: 10.0]" in blocks["--epochs"] and "[default: 0.002]" in blocks["--lr"]


def test_a_setting_of_another_task_is_an_error_naming_its_tasks(run_cli, tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("id,sequence,target\nA,MKT,1.0\nB,MKV,2.0\n")
    result = run_cli("train", "--data", data, "--task", "regression", "--lr-decay", "0.9", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --lr-decay: not a setting of task 'regression' (it would be ignored); " \
                                    "it belongs to seq2seq"
    result = run_cli("train", "--data", data, "--task", "nonsense")
    assert result.exit_code == 2 and "'nonsense' is not a task; the tasks are: membrane, localization" in result.stderr


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
