"""`scilm train --sift-*`: both policies run inside the Trainer, see all the data, and report counts."""

from __future__ import annotations

import json

import pytest

FAST = ["--model", "esm2-tiny", "--batch-size", "8", "--truncate", "48", "--no-progress", "--seed", "3"]


@pytest.mark.parametrize("policy", [pytest.param("relative", marks=pytest.mark.slow),  # ~12 s each; the quick
                                    pytest.param("reuse", marks=pytest.mark.slow), "random"])  # loop keeps one
def test_sifted_training_runs_its_epochs(run_cli, tiny_fastas, tmp_path, policy):
    train_fasta, valid_fasta = tiny_fastas
    out = tmp_path / policy
    result = run_cli("train", "--data", train_fasta, "--valid", valid_fasta, "--out", out, *FAST, "--epochs", "3",
                     "--sift-beta", "1", "--sift-delay", "2", "--sift-policy", policy)
    assert result.exit_code == 0, result.stderr
    assert "sifting kept" in result.stdout
    sifting = json.loads((out / "metrics.json").read_text())["sifting"]
    assert sifting["policy"] == policy
    assert 0.0 < sifting["keep_rate"] < 1.0  # something was dropped
    if policy in ("relative", "random"):
        # every raw sample of the 3 epochs went through: passed during the delay, or scored
        assert sifting["samples_passed"] + sifting["samples_seen"] == 3 * 48
        assert sifting["samples_passed"] == 2 * 8
        assert sifting["keep_rate"] == sifting["samples_kept"] / sifting["samples_seen"]
        assert sifting["scoring_share"] == sifting["scoring_seconds"] / sifting["wall_seconds"]
        assert sifting["scoring_seconds"] < sifting["wall_seconds"]
        if policy == "relative":  # the extra scoring pass takes time; the blind control scores nothing
            assert sifting["scoring_seconds"] > 0
    else:
        # the first epoch keeps everything (no loss known yet); later ones drop some
        assert sifting["samples_planned"] == 3 * 48 and sifting["samples_kept"] < 3 * 48
        assert sifting["keep_rate"] == sifting["samples_kept"] / sifting["samples_planned"]


def test_bad_sift_settings(run_cli, tiny_fastas, tmp_path):
    result = run_cli("train", "--data", tiny_fastas[0], "--out", tmp_path / "o", "--sift-beta", "1",
                     "--sift-policy", "hardest")
    assert result.exit_code == 2 and "--sift-policy must be one of relative, reuse, random, reuse-random" in result.stderr
    result = run_cli("train", "--data", tiny_fastas[0], "--out", tmp_path / "o", "--sift-beta", "-1")
    assert result.exit_code == 2 and "--sift-beta must be positive" in result.stderr
