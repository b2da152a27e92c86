"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import write_fasta


@pytest.fixture
def good_fasta(tmp_path):
    return write_fasta(tmp_path / "good.fasta", [("P1", "Cytoplasm-S", "MKTAYIAKQR"), ("P2", "Cell.membrane-M", "MLLVVAALLA"),
                                                 ("P3", "Cytoplasm-S", "MKTAYIAKQE"), ("P4", "Cell.membrane-M", "MLLVVAALLE")])


def bad_inputs(tmp_path, good_fasta):
    bad_residue = write_fasta(tmp_path / "bad.fasta", [("P1", "Cytoplasm-S", "MKTJ"), ("P2", "Nucleus-M", "MKV")])
    single = write_fasta(tmp_path / "single.fasta", [("P1", "Cytoplasm-S", "MKT"), ("P2", "Nucleus-S", "MKV")])
    dup = write_fasta(tmp_path / "dup.fasta", [("P1", "Cytoplasm-S", "MKT"), ("P1", "Nucleus-M", "MKT")])
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    table = tmp_path / "t.csv"
    table.write_text("ACC,Membrane,Sequence\nP1,0,MKT\nP2,1,MKV\n")
    config = tmp_path / "c.yaml"
    config.write_text("data: x.fasta\nlearning_rate: 0.1\n")
    return [
        (["--data", bad_residue], "record P1): invalid residue 'J' (U+004A LATIN CAPITAL LETTER J) at position 4"),
        (["--data", single], "only one label class"),
        (["--data", dup], "duplicated id 'P1' with conflicting labels"),
        (["--data", empty], "no usable records"),
        (["--data", tmp_path / "missing.fasta"], "missing.fasta: no such file"),
        (["--data", table, "--label-column", "Location"], "no column 'Location' (--label-column)"),
        (["--data", good_fasta, "--precision", "fp8"], "--precision must be one of"),
        (["--data", good_fasta, "--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--data", good_fasta, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--data", good_fasta, "--model", "./no/such/dir"], "no such model directory"),
        (["--config", config], "unknown setting(s): learning_rate"),
        (["--data", good_fasta, "--split-column", "Partition"], "--split-column and --valid-split go together"),
    ]


def test_bad_train_inputs(run_cli, tmp_path, good_fasta):
    for args, message in bad_inputs(tmp_path, good_fasta):
        out = tmp_path / "out"
        result = run_cli("train", *args, "--out", out)
        assert result.exit_code == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert message in lines[0], (message, lines[0])
        assert "Traceback" not in result.stderr and not out.exists()


def test_unknown_flag_is_rejected(run_cli, good_fasta):
    result = run_cli("train", "--data", good_fasta, "--learning-rate", "0.1")
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_finished_run_is_not_overwritten(run_cli, tmp_path, good_fasta):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    result = run_cli("train", "--data", good_fasta, "--out", out)
    assert result.exit_code == 2 and "already holds a finished run" in result.stderr
    assert (out / "metrics.json").read_text() == "{}"


def test_predict_and_embed_errors(run_cli, tmp_path, good_fasta):
    result = run_cli("predict", "--model", tmp_path / "nope", "--data", good_fasta, "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "no such model directory" in result.stderr
    result = run_cli("embed", "--model", "esm2-tiny", "--data", good_fasta, "--out", tmp_path / "e.txt")
    assert result.exit_code == 2 and "use one of .npy, .npz, .parquet" in result.stderr
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "e.txt").exists()


@pytest.mark.slow  # a real process: ~10 s
def test_real_process_prints_one_line(tmp_path):
    bad = write_fasta(tmp_path / "bad.fasta", [("P9", "Cytoplasm-S", "MK#")])
    proc = subprocess.run([sys.executable, "-m", "scilm", "train", "--data", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}:1 (record P9): invalid residue '#' (U+0023 NUMBER SIGN) at position 3 " \
                                  "(allowed: the 20 standard amino acids and X B Z U O)"
    assert not (tmp_path / "o").exists()


def test_a_damaged_weights_file_is_one_line(run_cli, tmp_path, good_fasta):
    import shutil

    from scilm.models.protein import resolve_source

    model = tmp_path / "model"
    shutil.copytree(resolve_source("esm2-tiny-mlm"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for command, out in (("embed", tmp_path / "e.npy"), ("predict", tmp_path / "p.csv")):
        result = run_cli(command, "--model", model, "--data", good_fasta, "--out", out)
        assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"--model {model}: cannot load its weights" in result.stderr.strip().splitlines()[-1]
        assert not out.exists()
