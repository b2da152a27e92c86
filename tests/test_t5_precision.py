"""T5 and fp16 (issue 15): T5's activations overflow fp16, so ``--precision auto`` never picks it for a
seq2seq run and an explicit ``--precision fp16`` is refused in one line; classifiers keep fp16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scilm.errors import ScilmError
from scilm.training.common import resolve_precision

SAMPLE = Path(__file__).parent / "data" / "textchem" / "textchem-sample"


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA machine, with or without bf16 units (``gpu(bf16=...)``)."""
    def make(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return make


@pytest.mark.parametrize("bf16, fp16_safe, expected", [
    (True, True, "bf16"), (False, True, "fp16"),  # classifiers: unchanged
    (True, False, "bf16"), (False, False, "fp32"),  # T5: never fp16
])
def test_auto_on_a_gpu(gpu, bf16, fp16_safe, expected):
    gpu(bf16)
    assert resolve_precision("auto", fp16_safe=fp16_safe) == expected


def test_auto_on_cpu_is_fp32():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_precision("auto", fp16_safe=False) == resolve_precision("auto") == "fp32"


def test_explicit_fp16_is_refused_for_t5_even_on_a_gpu(gpu):
    gpu(False)
    assert resolve_precision("fp16") == "fp16"
    with pytest.raises(ScilmError, match="T5 overflows in fp16"):
        resolve_precision("fp16", fp16_safe=False)
    assert resolve_precision("fp32", fp16_safe=False) == "fp32"


def test_cli_refuses_fp16_for_a_seq2seq_run_before_writing(run_cli, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--data", SAMPLE / "train.jsonl", "--valid", SAMPLE / "valid.jsonl", "--model", "t5-tiny",
                     "--out", out, "--precision", "fp16")
    assert result.exit_code == 2 and "--precision fp16: T5 overflows in fp16" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_seq2seq_config_refuses_fp16_at_validation_and_says_so_in_its_help(tmp_path):
    # YAML and library users meet the check before any run starts; the help of seq2seq's precision says why
    import dataclasses

    from scilm.training import TrainConfig, load_config
    from scilm.training.recipes.seq2seq.config import Config

    with pytest.raises(ScilmError, match="T5 overflows in fp16"):
        TrainConfig(data=str(SAMPLE / "train.jsonl"), precision="fp16").validate()
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data: {SAMPLE / 'train.jsonl'}\nprecision: fp16\n")
    with pytest.raises(ScilmError, match="T5 overflows in fp16"):
        load_config(yaml_file, {}).validate()
    assert TrainConfig(data=str(SAMPLE / "train.jsonl"), precision="bf16").validate().precision == "bf16"
    assert TrainConfig(data="x.fasta", precision="fp16").validate().precision == "fp16"  # classifiers keep it
    help_text = next(f for f in dataclasses.fields(Config) if f.name == "precision").metadata["help"]
    assert "fp16 is refused" in help_text
