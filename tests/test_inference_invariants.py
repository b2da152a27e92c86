"""Predict, embed and serve give one answer per record whatever the switches: batch size, input
order, entry point (CLI, server, in-process), tokenizer files present or not, and they cut
sequences at the length the model was trained with.

Issue 11 cases 3, 4, 8, 9 (end to end) and the invariants "batch size 1 vs 16 and shuffled input"
and "one protein through predict, serve and the in-process model".
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEEPLOC_VALID, LOCATIONS, write_fasta
from scilm.data.protein import read_proteins

TRAINED_LENGTH = 50
FAST = ["--model", "esm2-tiny", "--batch-size", "8", "--truncate", "60", "--no-progress"]
VOCAB = (Path(__file__).resolve().parents[1] / "src" / "scilm" / "models" / "esm2_vocab.txt").read_text().split()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread is faster than two fighting other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_fastas) -> Path:
    """A classifier trained for 2 steps with --truncate 50 (the sequences are up to 120 residues)."""
    from scilm.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(data=str(tiny_fastas[0]), valid=str(tiny_fastas[1]), model="esm2-tiny", out=str(out),
                      max_steps=2, batch_size=8, truncate=TRAINED_LENGTH, progress=False))
    return out / "model"


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    """20 real proteins of 12 to 120 residues, with repeated lengths (ties in the length sort)."""
    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None)
    rng = random.Random(0)
    lengths = [12, 30, 30, 49, 50, 51, 64, 64, 80, 120] * 2
    return [records[i].sequence[:n] for i, n in zip(rng.sample(range(len(records)), 20), lengths)]


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    return [r["id"] for r in rows], np.array([[float(r["prob_soluble"]), float(r["prob_membrane"])] for r in rows])


# -- case 9: the trained length is recorded and is everyone's default ---------------------------

def test_trained_length_is_the_default_of_predict_embed_and_serve(run_cli, model_dir, tiny_fastas, tmp_path):
    from scilm.serving.models import load_served_model

    assert json.loads((model_dir / "config.json").read_text())["scilm_max_residues"] == TRAINED_LENGTH
    data = tiny_fastas[1]
    longer = sum(len(r.sequence) > TRAINED_LENGTH for r in read_proteins(data))
    runs = {}
    for name, extra in (("default", []), ("explicit", ["--truncate", "50"]), ("longer", ["--truncate", "100"])):
        result = run_cli("predict", "--model", model_dir, "--data", data, "--out", tmp_path / f"{name}.csv", *extra)
        assert result.exit_code == 0, result.stderr
        runs[name] = (tmp_path / f"{name}.csv").read_text()
        if name != "longer":
            assert f"({longer} of 16 sequences cut to 50 residues)" in result.stdout
    assert longer > 0 and runs["default"] == runs["explicit"] and runs["default"] != runs["longer"]

    for name, extra in (("default", []), ("explicit", ["--truncate", "50"])):
        assert run_cli("embed", "--model", model_dir, "--data", data, "--out", tmp_path / f"{name}.npy",
                       *extra).exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "default.npy"), np.load(tmp_path / "explicit.npy"))
    assert load_served_model(model_dir).max_residues == TRAINED_LENGTH


def test_pretrain_records_its_length(run_cli, tiny_fastas, tmp_path):
    from scilm.models.protein import load_protein_encoder, max_residues

    out = tmp_path / "mlm"
    result = run_cli("pretrain", "--data", tiny_fastas[1], "--out", out, "--epochs", "1", "--batch-size", "16",
                     "--truncate", "40")
    assert result.exit_code == 0, result.stderr
    model, tokenizer = load_protein_encoder(str(out / "model"))
    assert max_residues(model.config, tokenizer) == 40


# -- invariants: batch size, order, entry point -------------------------------------------------

def test_batch_size_and_input_order_do_not_change_outputs(model_dir, proteins):
    from scilm.inference import embed_proteins, predict_proteins
    from scilm.models.protein import load_protein_encoder, load_trained_classifier

    order = list(range(len(proteins)))
    random.Random(1).shuffle(order)
    shuffled = [proteins[i] for i in order]
    model, tokenizer = load_trained_classifier(str(model_dir))
    reference = np.array([list(p.values()) for p in predict_proteins(model, tokenizer, proteins, batch_size=1)])
    for batch_size in (16, 3):
        batched = np.array([list(p.values()) for p in predict_proteins(model, tokenizer, proteins, batch_size)])
        np.testing.assert_allclose(batched, reference, atol=1e-5)
    permuted = np.array([list(p.values()) for p in predict_proteins(model, tokenizer, shuffled, batch_size=16)])
    np.testing.assert_allclose(permuted, reference[order], atol=1e-5)

    encoder, tokenizer = load_protein_encoder(str(model_dir))
    reference = embed_proteins(encoder, tokenizer, proteins, batch_size=1)
    np.testing.assert_allclose(embed_proteins(encoder, tokenizer, proteins, batch_size=16), reference, atol=1e-5)
    np.testing.assert_allclose(embed_proteins(encoder, tokenizer, shuffled, batch_size=16), reference[order], atol=1e-5)


def test_inference_batches_bound_tokens_padding_and_size():
    """embed and predict run the server's batches: longest first, at most batch_size proteins,
    forward_tokens padded residues (a longer protein alone) and on a CPU under 10 % padding."""
    from scilm.inference.batching import forward_tokens, inference_batches

    lengths = [1000, 30, 500, 480, 35, 40, 1200, 510, 33]
    assert forward_tokens("cpu") == 2048 and forward_tokens(torch.device("cuda")) == 16384
    # 1000 after 1200: 2,400 padded tokens > 2,048; 510 after 1000: 2,000 tokens but 32 % padding;
    # 40 after three: batch_size 3; 33 after 40, 35: 120 padded for 108 real (11 %)
    assert inference_batches(lengths, 3, "cpu") == [[6], [0], [7, 2, 3], [5, 4], [8, 1]]
    assert inference_batches(lengths, 3, "cuda") == [[6, 0, 7], [2, 3, 5], [4, 8, 1]]  # GPU: no padding bound
    assert inference_batches(lengths, 1, "cpu") == [[6], [0], [7], [2], [3], [5], [4], [8], [1]]
    assert inference_batches([], 4, "cpu") == []


def test_cli_outputs_follow_input_order_at_any_batch_size(run_cli, model_dir, proteins, tmp_path):
    ids = [f"Q{i:02d}" for i in range(len(proteins))]
    data = write_fasta(tmp_path / "p.fasta", [(i, "Cytoplasm-S", s) for i, s in zip(ids, proteins)])
    probabilities = {}
    for batch_size in ("1", "16"):
        out = tmp_path / f"b{batch_size}.csv"
        assert run_cli("predict", "--model", model_dir, "--data", data, "--out", out,
                       "--batch-size", batch_size).exit_code == 0
        written_ids, probabilities[batch_size] = read_predictions(out)
        assert written_ids == ids
        assert run_cli("embed", "--model", model_dir, "--data", data, "--out", tmp_path / f"b{batch_size}.npz",
                       "--batch-size", batch_size).exit_code == 0
        assert list(np.load(tmp_path / f"b{batch_size}.npz")["ids"]) == ids
    np.testing.assert_allclose(probabilities["1"], probabilities["16"], atol=2e-6)
    np.testing.assert_allclose(np.load(tmp_path / "b1.npz")["embeddings"], np.load(tmp_path / "b16.npz")["embeddings"],
                               atol=1e-5)


@pytest.fixture
def seen_tokens(monkeypatch):
    """Every (unpadded) token-id sequence the classifier's forward receives, by any entry point."""
    from transformers import EsmForSequenceClassification

    seen: list[tuple[int, ...]] = []
    original = EsmForSequenceClassification.forward

    def recording(self, input_ids=None, attention_mask=None, **kwargs):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append(tuple(i for i, m in zip(ids, mask) if m))
        return original(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(EsmForSequenceClassification, "forward", recording)
    return seen


def test_predict_serve_and_in_process_see_the_same_tokens_and_give_the_same_probabilities(
        run_cli, model_dir, proteins, tmp_path, seen_tokens):
    from scilm.inference import predict_proteins
    from scilm.models.protein import load_trained_classifier
    from scilm.serving.limits import RequestError
    from scilm.serving.schema import parse_payload
    from scilm.serving.models import load_served_model

    picked = proteins[:6]  # 12 .. 51 residues: cut and uncut ones
    # the reference tokens, from the vocabulary file alone: <cls> residues[:50] <eos>
    expected = sorted(tuple([VOCAB.index("<cls>"), *(VOCAB.index(c) for c in s[:TRAINED_LENGTH]), VOCAB.index("<eos>")])
                      for s in picked)

    model, tokenizer = load_trained_classifier(str(model_dir))
    in_process = np.array([list(p.values()) for p in predict_proteins(model, tokenizer, picked)])
    assert sorted(seen_tokens) == expected
    seen_tokens.clear()

    data = write_fasta(tmp_path / "p.fasta", [(f"P{i}", "Cytoplasm-S", s) for i, s in enumerate(picked)])
    assert run_cli("predict", "--model", model_dir, "--data", data, "--out", tmp_path / "p.csv").exit_code == 0
    _, cli = read_predictions(tmp_path / "p.csv")
    assert sorted(seen_tokens) == expected
    seen_tokens.clear()

    served = load_served_model(model_dir)
    payload = parse_payload({"inputs": picked, "parameters": {"truncation": True}}, 64)
    group, values = served.prepare(payload)
    answers = served.respond(payload, served.run_batch(group, values))
    assert sorted(seen_tokens) == expected
    by_label = np.array([[{d["label"]: d["score"] for d in answer}[name] for name in ("soluble", "membrane")]
                         for answer in answers])

    np.testing.assert_allclose(cli, in_process, atol=6e-7)  # the CSV has 6 decimals
    np.testing.assert_allclose(by_label, in_process, atol=1e-6)
    with pytest.raises(RequestError, match="sequence of 51 residues is over the model's limit of 50"):
        served.prepare(parse_payload({"inputs": picked}, 64))


def test_one_alphabet_end_to_end(run_cli, model_dir, tmp_path):
    from scilm.serving.limits import RequestError
    from scilm.serving.schema import parse_payload
    from scilm.serving.models import load_served_model

    message = "invalid residue 'ı' (U+0131 LATIN SMALL LETTER DOTLESS I) at position 3"
    data = write_fasta(tmp_path / "bad.fasta", [("P1", "Cytoplasm-S", "MKıTſ")])
    for command in ("predict", "embed"):
        result = run_cli(command, "--model", model_dir, "--data", data, "--out", tmp_path / "o.npy")
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("train", "--data", data, "--out", tmp_path / "run")
    assert result.exit_code == 2 and message in result.stderr
    with pytest.raises(RequestError, match=re.escape(message)):
        load_served_model(model_dir).prepare(parse_payload({"inputs": "MKıTſ"}, 64))


# -- case 3: duplicated ids -----------------------------------------------------------------------

def test_duplicated_ids_one_row_per_record_and_training_refuses(run_cli, model_dir, tmp_path):
    from scilm.inference import predict_proteins
    from scilm.models.protein import load_trained_classifier

    iso = [("sp|P12345|ISO", "Cytoplasm-S", "MKTAYIAKQRQISFVKSHFSRQ"), ("sp|P99999|OTHER", "Cell.membrane-M", "MLLVVAALLA"),
           ("sp|P12345|ISO", "Cytoplasm-S", "MWWWYIAKQRQISFVKSHFSRQLEERLG")]
    data = write_fasta(tmp_path / "iso.fasta", iso)
    result = run_cli("predict", "--model", model_dir, "--data", data, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0 and "wrote 3 predictions" in result.stdout
    ids, probabilities = read_predictions(tmp_path / "p.csv")
    assert ids == [i for i, _, _ in iso]
    model, tokenizer = load_trained_classifier(str(model_dir))
    alone = [list(predict_proteins(model, tokenizer, [s])[0].values()) for _, _, s in iso]
    np.testing.assert_allclose(probabilities, alone, atol=6e-7)
    assert abs(probabilities[0] - probabilities[2]).max() > 1e-6  # two sequences, two answers

    assert run_cli("embed", "--model", model_dir, "--data", data, "--out", tmp_path / "e.npz").exit_code == 0
    saved = np.load(tmp_path / "e.npz")
    assert list(saved["ids"]) == ids and saved["embeddings"].shape[0] == 3

    result = run_cli("train", "--data", data, "--out", tmp_path / "run", *FAST, "--max-steps", "1")
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert "duplicated id 'sp|P12345|ISO' names two different sequences (lines 1 and 5)" in result.stderr


# -- case 4: a model directory without tokenizer files ----------------------------------------------

def bare_copy(model_dir: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, to / name)
    return to


@pytest.mark.slow  # over ~10 s on 2 shared cores: CI runs it, the quick loop does not
def test_esm2_directory_without_tokenizer_files_uses_the_shipped_vocabulary(run_cli, model_dir, tiny_fastas,
                                                                           tmp_path, caplog):
    from scilm.serving.models import load_served_model

    bare = bare_copy(model_dir, tmp_path / "bare")
    data = tiny_fastas[1]
    with caplog.at_level(logging.WARNING):
        assert run_cli("predict", "--model", bare, "--data", data, "--out", tmp_path / "bare.csv").exit_code == 0
    assert "no tokenizer files; using the ESM-2 vocabulary shipped with scilm" in caplog.text
    assert run_cli("predict", "--model", model_dir, "--data", data, "--out", tmp_path / "full.csv").exit_code == 0
    assert (tmp_path / "bare.csv").read_text() == (tmp_path / "full.csv").read_text()
    for name, model in (("bare", bare), ("full", model_dir)):
        assert run_cli("embed", "--model", model, "--data", data, "--out", tmp_path / f"{name}.npy").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "bare.npy"), np.load(tmp_path / "full.npy"))
    assert load_served_model(bare).max_residues == TRAINED_LENGTH

    result = run_cli("train", "--data", tiny_fastas[0], "--valid", data, "--model", bare, "--out", tmp_path / "run",
                     "--batch-size", "8", "--truncate", "40", "--max-steps", "1", "--no-progress")
    assert result.exit_code == 0, result.stderr
    result = run_cli("pretrain", "--data", data, "--model", bare, "--out", tmp_path / "mlm", "--epochs", "1",
                     "--batch-size", "16", "--truncate", "40")
    assert result.exit_code == 0, result.stderr


def test_other_directories_without_tokenizer_files_are_one_line(run_cli, tiny_fastas, tmp_path, capsys):
    from transformers import EsmForSequenceClassification, T5Config, T5ForConditionalGeneration

    from scilm.errors import ScilmError
    from scilm.models.protein import esm2_config
    from scilm.serving.models import load_served_model

    esm40 = tmp_path / "esm40"
    EsmForSequenceClassification(esm2_config("esm2-tiny", vocab_size=40, num_labels=2)).save_pretrained(esm40)
    capsys.readouterr()  # save_pretrained's progress bar is not the command's output
    for command, out in (("predict", "p.csv"), ("embed", "e.npy")):
        result = run_cli(command, "--model", esm40, "--data", tiny_fastas[1], "--out", tmp_path / out)
        assert result.exit_code == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [f"error: --model {esm40}: no tokenizer (vocab.txt missing "
                                                      "beside config.json); save it with the model "
                                                      "(tokenizer.save_pretrained)"]
    with pytest.raises(ScilmError, match="no tokenizer"):
        load_served_model(esm40)

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0)).save_pretrained(t5)
    capsys.readouterr()
    result = run_cli("generate", "--model", t5, "--task", "text-to-smiles", "The molecule is ethanol.")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no tokenizer (tokenizer.json / tokenizer_config.json / vocab.txt / spiece.model missing" in result.stderr
    with pytest.raises(ScilmError, match="no tokenizer"):
        load_served_model(t5)


# -- case 8 and issue 12 item 6 through `scilm train` ----------------------------------------------

def test_localization_on_a_deeploc2_table_trains_the_ten_class_task(run_cli, deeploc2_csv, tmp_path):
    rows = list(csv.DictReader(open(deeploc2_csv, newline="", encoding="utf-8")))
    for row in rows[:3]:
        row["Nucleus"] = row["Cytoplasm"] = "1"
    data = tmp_path / "multi.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "loc"
    result = run_cli("train", "--data", data, "--task", "localization", "--out", out, *FAST, "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    present = {next(loc for loc in LOCATIONS if r[loc] == "1") for r in rows[3:]}
    assert metrics["labels"] == [loc for loc in LOCATIONS if loc in present] and "membrane" not in metrics["labels"]
    assert metrics["n_skipped_multilocation"] == 3 and metrics["n_train"] + metrics["n_eval"] == len(rows) - 3


def test_settings_that_would_be_ignored_are_errors(run_cli, tmp_path, tiny_fastas):
    table = tmp_path / "t.csv"
    table.write_text("ACC,Membrane,Sequence\nP1,0,MKT\nP2,1,MKV\n")
    jsonl = Path(__file__).parent / "data" / "textchem" / "textchem-sample" / "train.jsonl"
    cases = [
        (["--data", table, "--task", "localization"], "needs the DeepLoc-2 one-hot location columns"),
        (["--data", tiny_fastas[0], "--label-column", "Location"], "--label-column name table columns"),
        (["--data", tiny_fastas[0], "--sequence-column", "Seq"], "--sequence-column name table columns"),
        (["--data", tiny_fastas[0], "--max-source-length", "64"],
         "--max-source-length: not a setting of task 'membrane' (it would be ignored); it belongs to seq2seq"),
        (["--data", tiny_fastas[0], "--valid", tiny_fastas[1], "--valid-fraction", "0.3"], "nothing to split"),
        (["--data", jsonl, "--model", "t5-tiny", "--task", "localization"],
         f"--data {jsonl}: task 'localization' trains on protein FASTA or CSV/TSV"),
        (["--data", jsonl, "--model", "t5-tiny", "--truncate", "100"], "--truncate: not a setting of task 'seq2seq'"),
        # given explicitly at their default values, they are still not silently ignored
        (["--data", tiny_fastas[0], "--label-column", "Membrane"], "--label-column name table columns"),
        (["--data", tiny_fastas[0], "--valid", tiny_fastas[1], "--valid-fraction", "0.2"], "nothing to split"),
        (["--data", jsonl, "--model", "t5-tiny", "--truncate", "1022"], "--truncate: not a setting of task 'seq2seq'"),
        (["--data", tiny_fastas[0], "--tokenizer-vocab-size", "1000"], "--tokenizer-vocab-size: not a setting of task"),
    ]
    for args, message in cases:
        result = run_cli("train", *args, "--out", tmp_path / "run")
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_missing_labels_through_train(run_cli, tiny_fastas, tmp_path):
    records = read_proteins(tiny_fastas[0])
    lines = ["ACC,Membrane,Sequence"] + [f"{r.id},{int(r.label == 'membrane')}.0,{r.sequence}" for r in records]
    lines[5] = lines[5].replace(",1.0,", ",NaN,").replace(",0.0,", ",NaN,")
    data = tmp_path / "m.csv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("train", "--data", data, "--out", tmp_path / "a", *FAST, "--max-steps", "1")
    assert result.exit_code == 2 and f"m.csv:6 (record {records[4].id}): missing label 'NaN' in column 'Membrane'" \
        in result.stderr
    result = run_cli("train", "--data", data, "--out", tmp_path / "b", *FAST, "--max-steps", "1", "--drop-missing-labels")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["n_dropped_missing_label"] == 1 and metrics["n_train"] + metrics["n_eval"] == len(records) - 1
    assert metrics["labels"] == ["soluble", "membrane"]  # "1.0" and "0.0" are the Membrane 0/1 classes
