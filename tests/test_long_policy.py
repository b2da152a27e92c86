"""The long-protein policy (``long_policy`` head | ends | window) of train, predict, embed and serve:
the residues each policy feeds, windows against a direct computation, the policy recorded at training
and used by default, and the ``.cut.json`` report of which records were cut. Issue 13, task 6."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import DEEPLOC_VALID, write_fasta
from scilm.data.protein import read_proteins

MODEL = "esm2-tiny-mlm"
N = 9  # residues per piece: odd, so ends keeps 5 + 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder():
    from scilm.models.protein import load_protein_encoder

    return load_protein_encoder(MODEL)


@pytest.fixture(scope="module")
def sequences() -> list[str]:
    """Real proteins cut to 4..31 residues (some under N, some over, one exactly N)."""
    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None)
    return [r.sequence[:n] for r, n in zip(records, [31, 4, N, 23, 10, 17, 30])]


def _classifier(path=None, policy: str | None = None):
    from transformers import EsmForSequenceClassification

    from scilm.models.protein import esm2_config, esm2_tokenizer

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2, id2label={0: "soluble", 1: "membrane"},
                                                     label2id={"soluble": 0, "membrane": 1})).eval()
    if policy is not None:
        model.config.scilm_long_policy = policy
    if path is not None:
        model.save_pretrained(path)
        esm2_tokenizer().save_pretrained(path)
    return model, esm2_tokenizer()


def _fed_residues(model, tokenizer):
    """A forward pre-hook recording the residues of every sequence the model is fed (specials dropped)."""
    fed: list[str] = []

    def hook(_module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        for row, keep in zip(ids, mask):
            tokens = tokenizer.convert_ids_to_tokens(row[keep.bool()].tolist())
            fed.append("".join(tokens[1:-1]))

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


def _direct(model, tokenizer, residues: str) -> np.ndarray:
    """(len + 2, H) last hidden states of one piece run alone (no padding): the reference."""
    with torch.no_grad():
        return model(**tokenizer(residues, return_tensors="pt")).last_hidden_state[0].numpy()


# -- the residues fed --------------------------------------------------------------------------------

def test_ends_feeds_exactly_the_first_and_last_halves(encoder, sequences):
    from scilm.inference import embed_proteins
    from scilm.inference.policy import EndsPolicy
    from scilm.inference.predict import predict_proteins

    expected = [s if len(s) <= N else s[:5] + s[-4:] for s in sequences]
    model, tokenizer = encoder
    fed, handle = _fed_residues(model, tokenizer)
    try:
        per_residue = embed_proteins(model, tokenizer, sequences, batch_size=3, pooling="per-residue",
                                     policy=EndsPolicy(N))
    finally:
        handle.remove()
    assert sorted(fed) == sorted(expected)
    for s, rows in zip(expected, per_residue):  # rows belong to the residues fed, in order
        np.testing.assert_allclose(rows, _direct(model, tokenizer, s)[1:-1], atol=1e-5)

    classifier, tokenizer = _classifier()
    fed, handle = _fed_residues(classifier, tokenizer)
    try:
        predict_proteins(classifier, tokenizer, sequences, batch_size=2, policy=EndsPolicy(N))
    finally:
        handle.remove()
    assert sorted(fed) == sorted(expected)


def test_training_encodes_the_residues_of_its_policy(sequences):
    from scilm.data.protein import ProteinRecord
    from scilm.models.protein import esm2_tokenizer
    from scilm.training.recipes.protein import encode_records

    tokenizer = esm2_tokenizer()
    records = [ProteinRecord(id=f"p{i}", sequence=s, label="x") for i, s in enumerate(sequences)]
    for policy, cut in (("head", lambda s: s[:N]), ("ends", lambda s: s if len(s) <= N else s[:5] + s[-4:])):
        encoded = encode_records(records, tokenizer, N, [0] * len(records), policy)
        fed = ["".join(tokenizer.convert_ids_to_tokens(e["input_ids"])[1:-1]) for e in encoded]
        assert fed == [cut(s) for s in sequences]


def test_head_is_todays_truncation(encoder, sequences):
    from scilm.inference import embed_proteins
    from scilm.inference.policy import make_policy

    model, tokenizer = encoder
    by_policy = embed_proteins(model, tokenizer, sequences, policy=make_policy("head", N))
    np.testing.assert_array_equal(by_policy, embed_proteins(model, tokenizer, sequences, truncate=N))
    np.testing.assert_array_equal(by_policy, embed_proteins(model, tokenizer, [s[:N] for s in sequences],
                                                            truncate=10_000))


# -- windows -----------------------------------------------------------------------------------------

def _window_reference(model, tokenizer, sequence: str, n: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-residue rows (len, H): each residue's hidden states averaged over the windows covering it,
    every window run alone; and the windows' mean <cls> vector."""
    starts = list(range(0, max(len(sequence) - n, 0), stride)) + [max(len(sequence) - n, 0)]
    total = np.zeros((len(sequence), model.config.hidden_size))
    count = np.zeros(len(sequence))
    cls = []
    for start in sorted(set(starts)):
        states = _direct(model, tokenizer, sequence[start:start + n])
        total[start:start + n] += states[1:-1]
        count[start:start + n] += 1
        cls.append(states[0])
    assert count.min() >= 1
    return total / count[:, None], np.mean(cls, axis=0)


def test_window_per_residue_outputs_cover_every_residue_and_equal_a_direct_average(encoder, sequences):
    from scilm.inference import embed_proteins
    from scilm.inference.policy import make_policy

    model, tokenizer = encoder
    policy = make_policy("window", N)
    assert policy.step == N // 2
    per_residue = embed_proteins(model, tokenizer, sequences, batch_size=4, pooling="per-residue", policy=policy)
    mean = embed_proteins(model, tokenizer, sequences, batch_size=4, policy=policy)
    cls = embed_proteins(model, tokenizer, sequences, batch_size=4, pooling="cls", policy=policy)
    for i, s in enumerate(sequences):
        rows, cls_ref = _window_reference(model, tokenizer, s, N, N // 2)
        assert per_residue[i].shape == (len(s), model.config.hidden_size)  # the whole protein
        np.testing.assert_allclose(per_residue[i], rows, atol=1e-5)
        np.testing.assert_allclose(mean[i], rows.mean(0), atol=1e-5)
        np.testing.assert_allclose(cls[i], cls_ref, atol=1e-5)


def test_window_predict_averages_the_windows_logits(sequences):
    from scilm.inference.policy import make_policy
    from scilm.inference.predict import predict_proteins

    model, tokenizer = _classifier()
    policy = make_policy("window", N)
    got = predict_proteins(model, tokenizer, sequences, batch_size=3, policy=policy)
    for s, probabilities in zip(sequences, got):
        with torch.no_grad():
            logits = [model(**tokenizer(s[i:i + N], return_tensors="pt")).logits[0]
                      for i in policy.starts(len(s))]
        expected = torch.stack(logits).mean(0).softmax(-1).tolist()
        np.testing.assert_allclose(list(probabilities.values()), expected, atol=1e-5)


def test_window_embed_file_writes_every_residue_and_a_cut_report(run_cli, encoder, sequences, tmp_path):
    from scilm.inference import embed_proteins
    from scilm.inference.policy import make_policy

    model, tokenizer = encoder
    ids = [f"p{i}" for i in range(len(sequences))]
    data = write_fasta(tmp_path / "p.fasta", [(i, "Cytoplasm-S", s) for i, s in zip(ids, sequences)])
    result = run_cli("embed", "--model", MODEL, "--data", data, "--out", tmp_path / "e.npz", "--no-progress",
                     "--pooling", "per-residue", "--truncate", str(N), "--long-policy", "window", "--chunk-size", "3")
    assert result.exit_code == 0, result.stderr
    longer = [i for i, s in zip(ids, sequences) if len(s) > N]
    assert (f"({len(longer)} of {len(sequences)} sequences averaged over windows of {N} residues, stride {N // 2}); "
            f"their ids: {tmp_path / 'e.npz.cut.json'}") in result.stdout
    npz = np.load(tmp_path / "e.npz")
    assert list(npz["lengths"]) == [len(s) for s in sequences]
    assert "".join(npz["residues"]) == "".join(sequences)
    expected = embed_proteins(model, tokenizer, sequences, pooling="per-residue", policy=make_policy("window", N))
    np.testing.assert_allclose(npz["embeddings"], np.concatenate(expected), atol=1e-5)
    report = json.loads((tmp_path / "e.npz.cut.json").read_text())
    assert report == {"policy": {"name": "window", "max_residues": N, "stride": N // 2}, "n_records": len(sequences),
                      "n_cut": len(longer), "cut_rows": [ids.index(i) for i in longer], "cut_ids": longer}


# -- recorded at training, used by predict and serve ------------------------------------------------

def test_train_records_ends_and_predict_uses_it_by_default(run_cli, tiny_fastas, tmp_path):
    from scilm.inference.policy import EndsPolicy, make_policy
    from scilm.inference.predict import predict_proteins
    from scilm.models.protein import load_trained_classifier

    train_fasta, valid_fasta = tiny_fastas
    out = tmp_path / "run"
    result = run_cli("train", "--data", train_fasta, "--valid", valid_fasta, "--out", out, "--model", "esm2-tiny",
                     "--batch-size", "8", "--truncate", "20", "--long-policy", "ends", "--max-steps", "1",
                     "--no-progress")
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["scilm_long_policy"], config["scilm_max_residues"]) == ("ends", 20)

    records = read_proteins(valid_fasta, task=None, label_column=None)
    result = run_cli("predict", "--model", out / "model", "--data", valid_fasta, "--out", tmp_path / "p.csv",
                     "--no-progress")
    assert result.exit_code == 0, result.stderr
    longer = [r.id for r in records if len(r.sequence) > 20]
    assert longer and f"({len(longer)} of {len(records)} sequences cut to their first 10 and last 10 residues)" \
        in result.stdout
    net, tokenizer = load_trained_classifier(str(out / "model"))
    sequences = [r.sequence for r in records]
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    got = np.array([[float(r[f"prob_{label}"]) for label in net.config.id2label.values()] for r in rows])
    ends = predict_proteins(net, tokenizer, sequences, policy=EndsPolicy(20))
    np.testing.assert_allclose(got, [list(p.values()) for p in ends], atol=2e-6)  # CSV keeps 6 decimals
    report = json.loads((tmp_path / "p.csv.cut.json").read_text())
    assert (report["policy"], report["cut_ids"]) == ({"name": "ends", "max_residues": 20}, longer)

    run_cli("predict", "--model", out / "model", "--data", valid_fasta, "--out", tmp_path / "h.csv",
            "--no-progress", "--long-policy", "head")  # an explicit choice overrides the recorded one
    head = [[float(r[f"prob_{label}"]) for label in net.config.id2label.values()]
            for r in csv.DictReader(open(tmp_path / "h.csv", encoding="utf-8"))]
    expected = predict_proteins(net, tokenizer, sequences, policy=make_policy("head", 20))
    np.testing.assert_allclose(head, [list(p.values()) for p in expected], atol=2e-6)
    # the library's default is the model's policy too
    assert predict_proteins(net, tokenizer, sequences) == ends


@pytest.mark.parametrize("policy", ["ends", "window"])
def test_serve_truncation_applies_the_models_policy(policy, sequences, tmp_path):
    from scilm.inference.policy import make_policy
    from scilm.inference.predict import policy_logits
    from scilm.serving.models import ServedClassifier
    from scilm.serving.schema import ClassifierParameters, Payload

    model, tokenizer = _classifier(policy=policy)
    model.config.scilm_max_residues = N
    served = ServedClassifier(model, tokenizer, tmp_path)
    assert served.info()["long_policy"] == policy
    _, prepared = served.prepare(Payload(sequences, False, ClassifierParameters(truncation=True)))
    logits = served.run_batch(None, prepared)
    expected = policy_logits(model, tokenizer, sequences, make_policy(policy, N))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5)


# -- bad values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "predict", "embed"])
def test_a_bad_policy_is_one_line_and_exit_2(run_cli, tiny_fastas, tmp_path, command):
    train_fasta, _ = tiny_fastas
    value = "window" if command == "train" else "middle"
    args = {"train": ["--data", train_fasta, "--out", tmp_path / "run"],
            "predict": ["--model", "esm2-tiny", "--data", train_fasta, "--out", tmp_path / "p.csv"],
            "embed": ["--model", MODEL, "--data", train_fasta, "--out", tmp_path / "e.npy"]}[command]
    result = run_cli(command, *args, "--long-policy", value)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--long-policy" in lines[0] and value in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_residue_task_refuses_a_policy_other_than_head(run_cli, tmp_path):
    data = tmp_path / "r.csv"
    data.write_text("id,Sequence,labels\na,MKTAYIAKQR,HHHHEEEECC\nb,MKTAYIAKQR,HHHHEEEECC\n", encoding="utf-8")
    result = run_cli("train", "--task", "residue", "--data", data, "--out", tmp_path / "run", "--long-policy", "ends")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--long-policy ends" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
