"""Text+Chem seq2seq: the t5-tiny tokenizer, the training recipe (`scilm train` on JSONL) and its switches.

Every run is a t5-tiny for a few steps on the GT4SD sample files, as published (no final newline).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from scilm.chem.tokenize import split_smiles
from scilm.data.textchem import read_jsonl
from scilm.errors import ScilmError

SAMPLE = Path(__file__).parent / "data" / "textchem" / "textchem-sample"
TRAIN, VALID = SAMPLE / "train.jsonl", SAMPLE / "valid.jsonl"
FAST = ["--model", "t5-tiny", "--batch-size", "4", "--max-source-length", "64", "--max-target-length", "48",
        "--no-progress", "--seed", "1"]
METRIC_KEYS = {"eval_loss", "train_loss", "train_runtime_s", "train_samples_per_second", "train_tokens_per_second",
               "peak_memory_mb", "peak_memory_method", "global_step", "eval_history", "n_train", "n_eval", "tasks",
               "vocab_size", "trainable_parameters", "total_parameters", "precision", "config", "versions"}


@pytest.fixture(scope="module", autouse=True)
def single_thread_module():
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread():
    """2 shared cores: one intra-op thread is several times faster than two fighting other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


def cli(*args) -> tuple[int, str, str]:
    """`scilm ARGS` in-process for module-scoped fixtures (run_cli is per test)."""
    import io

    from scilm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["scilm", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s") / "run"
    with one_thread():
        code, stdout, stderr = cli("train", "--data", TRAIN, "--valid", VALID, "--out", out, "--max-steps", "3", *FAST)
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    examples = read_jsonl(TRAIN) + read_jsonl(VALID)
    return [text for e in examples for text in (e.source, e.target)]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from scilm.models.seq2seq import train_tokenizer

    return train_tokenizer(corpus, vocab_size=1000)


# -- tokenizer ---------------------------------------------------------------------------------------

BACKSLASHES = ["C/C=C\\C", "CCCCC/C=C\\\\C/C=C\\\\CC", "F/C=C/F", "a\\b  c\\\\d", "O=C([O-])c1ccccc1~[Na+]"]


def test_tokenizer_round_trips_text_and_smiles(tokenizer, corpus):
    for text in corpus + BACKSLASHES + ["x (y) [z] {w} 100% ~#$@!?", "Cl Br Clear brown"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_has_t5_special_ids_and_reloads(tokenizer, tmp_path):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Caption the following SMILES: C[C@@H](Cl)Br"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]


def _pieces(tokenizer, text: str) -> list[str]:
    return [t.lstrip("\u2581") for t in tokenizer.tokenize(text)]


def test_tokenizer_never_cuts_smiles_atoms_apart(tokenizer, corpus):
    smiles = [e.target for e in read_jsonl(TRAIN) if e.task in ("text-to-smiles", "forward-prediction")]
    for s in smiles:
        boundaries = set()
        position = 0
        for piece in split_smiles(s):
            position += len(piece)
            boundaries.add(position)
        position = 0
        for token in _pieces(tokenizer, s):  # every token ends on an atom / bond / ring boundary
            position += len(token)
            assert position in boundaries, (s, token)
    # bracket atoms, two-letter elements and bonds of the corpus are single tokens
    assert _pieces(tokenizer, "[C@@H](Cl)Br") == ["[C@@H]", "(", "Cl", ")", "Br"]
    assert _pieces(tokenizer, "[Na+]~[OH-]") == ["[Na+]", "~", "[OH-]"]
    # ... and English words are not cut at atom-like letters (o, c, n, s ... inside "molecule")
    assert "molecule" in _pieces(tokenizer, "The molecule is an acid")


def test_unknown_model_and_wrong_model_kind(tmp_path):
    from scilm.models.seq2seq import load_seq2seq_model, load_trained_seq2seq

    with pytest.raises(ScilmError, match="no such model directory"):
        load_trained_seq2seq(str(tmp_path / "missing"))
    with pytest.raises(ScilmError, match="untrained"):
        load_trained_seq2seq("t5-tiny")
    with pytest.raises(ScilmError, match="training corpus"):
        load_seq2seq_model("t5-tiny")
    (tmp_path / "esm").mkdir()
    (tmp_path / "esm" / "config.json").write_text(json.dumps({"model_type": "esm"}))
    with pytest.raises(ScilmError, match="not a T5"):
        load_trained_seq2seq(str(tmp_path / "esm"))


# -- training ----------------------------------------------------------------------------------------

def test_train_on_original_jsonl_writes_metrics_and_a_loadable_model(base_run):
    out, stdout = base_run
    assert "eval_loss" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    # the sample files have no final newline: all 10 lines, 2 per task, are kept
    assert metrics["n_train"] == 10 and metrics["n_eval"] == 10 and metrics["global_step"] == 3
    assert metrics["tasks"]["forward-prediction"] == {"n_train": 2, "n_eval": 2} and len(metrics["tasks"]) == 5
    assert metrics["peak_memory_mb"] > 0
    files = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    from scilm.inference.generate import load_seq2seq
    from scilm.training.recipes.seq2seq.recipe import encode

    model, tokenizer = load_seq2seq(out / "model")
    assert isinstance(model, T5ForConditionalGeneration) and model.config.d_model == 128
    assert len(tokenizer) == metrics["vocab_size"] == model.config.vocab_size
    # eval_loss is the token-weighted cross-entropy of the saved model over the whole validation set:
    # recomputed here one example at a time with transformers' own loss
    total, tokens = 0.0, 0
    with torch.no_grad():
        for item in encode(read_jsonl(VALID), tokenizer, 64, 48):
            labels = torch.tensor([item["labels"]])
            loss = model(input_ids=torch.tensor([item["input_ids"]]), labels=labels).loss
            total, tokens = total + float(loss) * labels.numel(), tokens + labels.numel()
    assert metrics["eval_loss"] == pytest.approx(total / tokens, rel=1e-5)


def test_padding_never_counts_in_the_loss(tokenizer, single_thread):
    """A short target padded next to a long one has the same loss as alone; padded labels are -100."""
    from scilm.models.seq2seq import load_seq2seq_model
    from scilm.sifting import per_sample_token_mean
    from scilm.training.recipes.seq2seq.recipe import collator, encode

    examples = read_jsonl(TRAIN)[:4]
    model, tok = load_seq2seq_model("t5-tiny", [t for e in examples for t in (e.source, e.target)], 500, seed=0)
    model.eval()
    features = encode(examples, tok, 64, 48)
    batch = collator(tok, model)(features)
    lengths = [len(f["labels"]) for f in features]
    assert len(set(lengths)) > 1  # there is padding to mask
    for row, n in enumerate(lengths):
        assert (batch["labels"][row, n:] == -100).all() and (batch["labels"][row, :n] != -100).all()
    with torch.no_grad():
        batched = model(**batch)
        per_sample = per_sample_token_mean(batched.logits, batch["labels"])
        for row, feature in enumerate(features):
            alone = collator(tok, model)([feature])
            assert torch.allclose(model(**alone).loss, per_sample[row], atol=1e-5)
        # the batch loss is the mean over real target tokens only
        real = torch.cat([per_sample[i].repeat(n) for i, n in enumerate(lengths)]).mean()
        assert torch.allclose(batched.loss, real, atol=1e-5)


def test_lr_decay_is_per_epoch():
    from scilm.training.recipes.seq2seq.recipe import epoch_decay_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = epoch_decay_schedule(optimizer, warmup_steps=0, steps_per_epoch=2, decay=0.5)
    lrs = []
    for _ in range(6):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    warm = epoch_decay_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 2, 10, 0.9)
    assert warm.get_last_lr()[0] == 0.5


def test_original_schedule_keeps_the_best_checkpoint(run_cli, tmp_path, single_thread, caplog):
    out = tmp_path / "best"
    result = run_cli("train", "--data", TRAIN, "--valid", VALID, "--out", out, *FAST, "--max-steps", "4",
                     "--lr", "0.02", "--lr-decay", "0.5", "--grad-accum", "2", "--warmup-ratio", "0",
                     "--eval-steps", "1", "--eval-max-batches", "1", "--keep-best")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["eval_history"]
    periodic = history[:4]
    assert [row["step"] for row in periodic] == [1, 2, 3, 4]
    best = min(periodic, key=lambda row: row["eval_loss"])
    # the final weights are evaluated again only if they are not step 4's (an earlier best reloaded)
    assert len(history) == (4 if best["step"] == 4 else 5)
    assert metrics["best_checkpoint"] == {"step": best["step"], "eval_loss": pytest.approx(best["eval_loss"])}
    # one validation batch of 32 holds all 10 examples: the final loss is the restored best model's
    assert metrics["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)
    assert not (out / "checkpoints").exists()
    assert metrics["config"]["lr_decay"] == 0.5 and metrics["config"]["keep_best"]
    # T5's lm_head is tied to the embeddings: reloading the best checkpoint is not a "missing key"
    assert "missing keys" not in caplog.text + result.stderr
    assert f"loading the best checkpoint (step {best['step']}" in caplog.text
    # the final row measures the best checkpoint's weights and says whose, unless the best was the last
    assert metrics["eval_history"][-1].get("weights_of_step") == (best["step"] if best["step"] != 4 else None)


def test_lora_and_checkpointing_save_a_merged_model(run_cli, tmp_path, single_thread):
    out = tmp_path / "lora"
    result = run_cli("train", "--data", TRAIN, "--valid", VALID, "--out", out, *FAST, "--max-steps", "2",
                     "--lora", "--lora-r", "4", "--grad-checkpointing", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = T5ForConditionalGeneration.from_pretrained(out / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.parametrize("policy", [pytest.param("relative", marks=pytest.mark.slow), "reuse"])
def test_sifting_with_the_seq2seq_loss(run_cli, tmp_path, single_thread, policy):
    out = tmp_path / policy
    result = run_cli("train", "--data", TRAIN, "--valid", VALID, "--out", out, *FAST, "--batch-size", "2",
                     "--epochs", "2", "--sift-beta", "1", "--sift-delay", "1", "--sift-policy", policy)
    assert result.exit_code == 0, result.stderr
    sifting = json.loads((out / "metrics.json").read_text())["sifting"]
    assert sifting["policy"] == policy
    kept, offered = sifting["samples_kept"], sifting["samples_seen" if policy == "relative" else "samples_planned"]
    assert 0 < kept <= offered and sifting["keep_rate"] == kept / offered


def test_valid_split_without_valid_file(run_cli, tmp_path, single_thread):
    out = tmp_path / "split"
    result = run_cli("train", "--data", TRAIN, "--out", out, *FAST, "--max-steps", "1", "--valid-fraction", "0.2")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # split by pair: both directions of a reaction (or molecule/caption) stay on one side
    assert metrics["n_train"] + metrics["n_eval"] == 10 and 1 <= metrics["n_eval"] <= 4


def test_bad_jsonl_line_names_file_and_line(run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = TRAIN.read_text().splitlines()
    bad.write_text("\n".join([lines[0], '{"source": "Caption the following SMILES: C"', *lines[1:]]))
    result = run_cli("train", "--data", bad, "--valid", VALID, "--out", tmp_path / "o", "--model", "t5-tiny")
    assert result.exit_code == 2 and f"{bad}:2: not valid JSON" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--lr-decay", "1.5"], "--lr-decay must be in (0, 1]"),
    (["--eval-steps", "0"], "--eval-steps must be at least 1"),
    (["--lr-decay", "0.9", "--sift-beta", "1"], "do not combine"),
    (["--tokenizer-vocab-size", "50"], "--tokenizer-vocab-size must be at least 200"),
    (["--max-length", "100"], "--max-length: not a setting of task 'seq2seq' (it would be ignored); it belongs to "
                              "membrane, localization, regression"),
    (["--task", "membrane"], f"--data {TRAIN}: task 'membrane' trains on protein FASTA or CSV/TSV"),
    (["--model", "esm2-tiny"], "--model esm2-tiny is a protein model"),
])
def test_bad_seq2seq_settings(run_cli, tmp_path, flags, message):
    result = run_cli("train", "--data", TRAIN, "--valid", VALID, "--out", tmp_path / "o", "--model", "t5-tiny", *flags)
    assert result.exit_code == 2 and message in result.stderr
