"""A checkpoint directory in the format of the released GT4SD Text+Chem T5 models (issue 15), built
offline: it loads, generates, evaluates, fine-tunes (full and LoRA) and serves as it is.

``GT4SD/multitask-text-and-chemistry-t5-small-augm`` holds a T5 ``config.json``, the weights and
T5's stock sentencepiece tokenizer as ``T5Tokenizer.save_pretrained`` wrote it in transformers 4:
``spiece.model``, ``tokenizer_config.json`` (``tokenizer_class`` T5Tokenizer, 100 extra ids),
``special_tokens_map.json``, and no ``tokenizer.json`` (transformers converts ``spiece.model``).
The weights here are a tiny random T5 (safetensors); the sentencepiece model is trained by the
fixture on the bundled texts with ``\\`` and ``~`` removed, as T5's web-text vocabulary lacks them.
"""

from __future__ import annotations

import io
import json
import logging
import string
from pathlib import Path

import httpx
import pytest
import torch

from scilm.chem.smiles import canonical_smiles
from scilm.data.textchem import MOLECULE_TASKS, read_jsonl

DATA = Path(__file__).parent / "data" / "textchem"
SAMPLE = DATA / "textchem-sample"
EXTRA_IDS = [f"<extra_id_{i}>" for i in range(100)]


def bundled_texts() -> list[str]:
    texts = [t for split in ("train", "valid", "test") for e in read_jsonl(SAMPLE / f"{split}.jsonl")
             for t in (e.source, e.target)]
    texts += (DATA / "chebi20-validation.txt").read_text(encoding="utf-8").splitlines()
    texts += (DATA / "p2a-src-test.txt").read_text(encoding="utf-8").splitlines()
    # T5's web-text vocabulary has the other printable ASCII characters, those the slices lack too
    return texts + [" ".join(string.printable.strip())]


def write_gt4sd_checkpoint(out: Path, lacking: str = "\\~") -> Path:
    """``out`` in the released checkpoints' layout: tiny random T5, stock-T5-style sentencepiece tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    out.mkdir(parents=True)
    table = str.maketrans("", "", lacking)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # T5's special pieces and ids: <pad> 0, </s> 1, <unk> 2, no <s>
        sentence_iterator=iter([t.translate(table) for t in bundled_texts()]), model_writer=model,
        vocab_size=600, hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        minloglevel=2, num_threads=1)
    (out / "spiece.model").write_bytes(model.getvalue())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": EXTRA_IDS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "extra_ids": 100, "model_max_length": 512, "name_or_path": "t5-small", "sp_model_kwargs": {},
         "special_tokens_map_file": None, "tokenizer_class": "T5Tokenizer"}, indent=2))
    n_tokens = len(AutoTokenizer.from_pretrained(str(out)))
    # t5-small's layout: relu feed-forward, 32 relative buckets, an embedding padded past the vocabulary
    # (32128 rows for 32100 tokens) -- here to the next multiple of 128
    config = T5Config(vocab_size=-(-n_tokens // 128) * 128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, n_positions=512, dropout_rate=0.1)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(str(out))  # config.json + model.safetensors
    (out / "generation_config.json").unlink(missing_ok=True)  # the 2022 checkpoints predate it
    return out


@pytest.fixture(scope="module")
def gt4sd_dir(tmp_path_factory) -> Path:
    return write_gt4sd_checkpoint(tmp_path_factory.mktemp("gt4sd") / "multitask-text-and-chemistry-t5-small-augm")


def test_the_directory_has_the_released_layout(gt4sd_dir):
    assert sorted(p.name for p in gt4sd_dir.iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "spiece.model", "tokenizer_config.json"]


def test_loads_and_detects_the_missing_smiles_characters(gt4sd_dir, caplog):
    from scilm.inference.generate import load_seq2seq
    from scilm.models.seq2seq import unrepresentable_smiles_characters

    with caplog.at_level(logging.WARNING, logger="scilm"):
        model, tokenizer = load_seq2seq(str(gt4sd_dir))
    assert type(tokenizer).__name__.startswith("T5Tokenizer") and tokenizer.unk_token_id == 2
    assert len(tokenizer) <= model.config.vocab_size
    assert unrepresentable_smiles_characters(tokenizer) == "\\~"
    assert "cannot write \\ ~" in caplog.text


def test_a_vocabulary_with_every_character_needs_no_repair(tmp_path):
    from transformers import AutoTokenizer

    from scilm.models.seq2seq import unrepresentable_smiles_characters

    full = write_gt4sd_checkpoint(tmp_path / "full", lacking="")
    assert unrepresentable_smiles_characters(AutoTokenizer.from_pretrained(str(full))) == ""


def smiles_targets() -> list[str]:
    examples = [e for split in ("train", "valid", "test") for e in read_jsonl(SAMPLE / f"{split}.jsonl")]
    chebi = [line.split("\t")[1].replace("\\\\", "\\")
             for line in (DATA / "chebi20-validation.txt").read_text(encoding="utf-8").splitlines()[1:]]
    return [e.target for e in examples if e.task in MOLECULE_TASKS] + chebi


def test_outputs_are_repaired_to_the_smiles_the_model_meant(gt4sd_dir):
    # what the model can say for a target is its encoding: \ and ~ become <unk>; decoding must give the target
    from scilm.inference.generate import decode, load_seq2seq

    _, tokenizer = load_seq2seq(str(gt4sd_dir))
    targets = smiles_targets()
    with_lost = [t for t in targets if "\\" in t or "~" in t]
    assert any("\\" in t for t in with_lost) and any("~" in t for t in with_lost)
    for target in targets:
        ids = tokenizer(target)["input_ids"]
        assert (tokenizer.unk_token_id in ids) == (target in with_lost)
        # the sample files keep ChEBI-20's doubled \\, one <unk> for the run: repaired to one \ (same molecule)
        repaired = decode(tokenizer, [tokenizer.pad_token_id, *ids], smiles=True)
        assert repaired == target.replace("\\\\", "\\")
        assert canonical_smiles(repaired) == canonical_smiles(target) is not None
    salt = tokenizer("[Na+]~[OH-]")["input_ids"]
    assert decode(tokenizer, salt, smiles=False) == "[Na+]<unk>[OH-]"  # text outputs keep <unk> visible


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_generate_and_evaluate(gt4sd_dir, run_cli, tmp_path):
    out = tmp_path / "gen.jsonl"
    result = run_cli("generate", "--model", gt4sd_dir, "--task", "retrosynthesis", "CCO", "C/C=C\\C",
                     "--num-beams", "2", "--max-length", "8", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == ["CCO", "C/C=C\\C"]
    metrics = tmp_path / "eval.json"
    result = run_cli("evaluate", "--model", gt4sd_dir, "--data", SAMPLE / "test.jsonl", "--out", metrics,
                     "--num-beams", "2", "--top-k", "1,2", "--max-length", "8", "--forward-model", gt4sd_dir)
    assert result.exit_code == 0, result.stderr
    tasks = json.loads(metrics.read_text())["tasks"]
    assert tasks["retrosynthesis"]["n_examples"] == 2 and "round_trip" in tasks["retrosynthesis"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fine_tunes_one_step_and_reloads(gt4sd_dir, run_cli, tmp_path, lora):
    from scilm.inference.generate import load_seq2seq
    from scilm.models.seq2seq import unrepresentable_smiles_characters

    out = tmp_path / "run"
    result = run_cli("train", "--data", SAMPLE / "train.jsonl", "--valid", SAMPLE / "valid.jsonl", "--model",
                     gt4sd_dir, "--out", out, "--max-steps", "1", "--batch-size", "4", "--max-source-length", "64",
                     "--max-target-length", "64", "--warmup-ratio", "0", "--lr", "1e-2", "--no-progress",
                     *(["--lora"] if lora else []))
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert (out / "adapter").is_dir() == lora
    model, tokenizer = load_seq2seq(str(out / "model"))
    assert unrepresentable_smiles_characters(tokenizer) == "\\~"  # the same vocabulary, saved with the model
    before, _ = load_seq2seq(str(gt4sd_dir))
    changed = [name for name, p in model.state_dict().items()
               if not torch.equal(p, before.state_dict()[name])]
    assert changed  # one optimizer step moved the weights (merged LoRA included)


def test_serves(gt4sd_dir):
    from scilm.serving.local import server_thread
    from scilm.serving.models import load_served_model
    from scilm.serving.server import create_app

    with server_thread(create_app(load_served_model(gt4sd_dir), max_wait_ms=5)) as base:
        answer = httpx.post(f"{base}/predict", json={"inputs": "CCO", "parameters": {
            "task": "retrosynthesis", "num_beams": 2, "max_new_tokens": 6}})
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()[0]["generated_text"], str)
        assert httpx.get(f"{base}/info").json()["kind"] == "seq2seq"
