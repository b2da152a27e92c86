"""scilm serve for a per-residue model (``--task residue``), over real HTTP: one Hugging Face token-classification
item per residue, whose labels are what ``scilm predict`` writes for the same sequence; the classifier's bounds.

The model is esm2-tiny with a random 3-class token head (labels C, E, H), saved as the recipe saves it
(safetensors, tokenizer, the trained length in config.json).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import httpx
import pytest
import torch

from scilm.serving.bounds import ServerLimits
from scilm.serving.local import server_thread
from scilm.serving.models import ServedResidueClassifier, load_served_model, model_kind
from scilm.serving.server import create_app

JSON = {"content-type": "application/json"}
MAX_RESIDUES = 30
AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def residue_dir(tmp_path_factory) -> Path:
    from scilm.models.protein import load_protein_classifier, record_max_residues

    model, tokenizer = load_protein_classifier("esm2-tiny", ["C", "E", "H"], seed=3, per_residue=True)
    record_max_residues(model, MAX_RESIDUES)
    out = tmp_path_factory.mktemp("served-residue") / "model"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def served(residue_dir):
    return load_served_model(residue_dir)


@pytest.fixture(scope="module")
def url(served):
    with server_thread(create_app(served, max_batch_size=8, max_wait_ms=5,
                                  limits=ServerLimits(max_request_cost=200))) as base:
        yield base


def sequences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(rng.randint(5, MAX_RESIDUES))) for _ in range(n)]


def predicted_by_cli(run_cli, model: Path, seqs: list[str], tmp_path: Path, *extra) -> list[str]:
    """The ``labels`` column ``scilm predict`` writes for ``seqs``."""
    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "Sequence"])
        writer.writerows([f"s{i}", s] for i, s in enumerate(seqs))
    result = run_cli("predict", "--model", model, "--data", table, "--id-column", "id", "--out", tmp_path / "p.csv",
                     *extra)
    assert result.exit_code == 0, result.stderr
    with open(tmp_path / "p.csv", newline="") as handle:
        return [row["labels"] for row in csv.DictReader(handle)]


def test_answers_are_hf_token_items_whose_labels_are_predicts(served, residue_dir, url, run_cli, tmp_path):
    assert model_kind(residue_dir) == "residue" and isinstance(served, ServedResidueClassifier)
    info = httpx.get(f"{url}/info").json()
    assert info["task"] == "per-residue" and info["labels"] == ["C", "E", "H"] and info["max_residues"] == MAX_RESIDUES
    seqs = sequences(5)
    response = httpx.post(f"{url}/predict", json={"inputs": seqs, "parameters": {"aggregation_strategy": "none"}})
    assert response.status_code == 200, response.text
    answers = response.json()
    labels = predicted_by_cli(run_cli, residue_dir, seqs, tmp_path)
    assert ["".join(item["entity"] for item in answer) for answer in answers] == labels
    assert len(set("".join(labels))) > 1  # the labels vary: a wrong alignment or class order would show
    # each item: the residue, its position, and the softmax probability of its label, from the model itself
    model, tokenizer = served.model, served.tokenizer
    for sequence, answer in zip(seqs, answers):
        with torch.inference_mode():
            logits = model(**tokenizer([sequence], return_tensors="pt")).logits[0, 1:len(sequence) + 1]
        probabilities = logits.softmax(dim=-1)
        assert [(a["index"], a["word"], a["start"], a["end"]) for a in answer] == \
            [(i, residue, i, i + 1) for i, residue in enumerate(sequence)]
        assert [a["score"] for a in answer] == pytest.approx(probabilities.max(dim=-1).values.tolist(), abs=1e-5)
    # one input string: its list alone (the token-classification pipeline's shape), the same items
    single = httpx.post(f"{url}/predict", json={"inputs": seqs[1]}).json()
    assert [item["entity"] for item in single] == [item["entity"] for item in answers[1]]


def test_truncation_and_the_classifier_bounds(residue_dir, url, run_cli, tmp_path):
    long = sequences(1, seed=7)[0] * 3  # over MAX_RESIDUES
    refused = httpx.post(f"{url}/predict", json={"inputs": long})
    assert refused.status_code == 422 and f"over the model's limit of {MAX_RESIDUES}" in refused.text
    cut = httpx.post(f"{url}/predict", json={"inputs": long, "parameters": {"truncation": True}}).json()
    (written,) = predicted_by_cli(run_cli, residue_dir, [long], tmp_path)
    assert len(cut) == MAX_RESIDUES and "".join(item["entity"] for item in cut) == written.rstrip(".")
    assert written == "".join(item["entity"] for item in cut) + "." * (len(long) - MAX_RESIDUES)
    # the cost of an input is its tokens (residues + 2): 7 x 30-residue inputs = 224 > 200
    expensive = httpx.post(f"{url}/predict", json={"inputs": [long[:MAX_RESIDUES]] * 7})
    assert expensive.status_code == 422 and "request too expensive: 224 token-steps" in expensive.text
    assert httpx.post(f"{url}/predict", json={"inputs": [long[:MAX_RESIDUES]] * 6}).status_code == 200


@pytest.mark.parametrize("parameters, message", [
    ({"aggregation_strategy": "simple"}, "parameters.aggregation_strategy"),
    ({"top_k": 1}, "unknown parameter(s) ['top_k'] for a per-residue classifier model"),
])
def test_parameters_it_cannot_honour_are_refused_by_name(url, parameters, message):
    response = httpx.post(f"{url}/predict", json={"inputs": "MKTAYIAK", "parameters": parameters})
    assert response.status_code == 422 and message in response.text, response.text
