"""The CLI surface: `scilm train`'s options are TrainConfig's fields, every default shown, --version."""

from __future__ import annotations

import dataclasses
import re
from importlib import metadata

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
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
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
