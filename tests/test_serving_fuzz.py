"""A bounded fuzz of /predict, /draw and /info (hypothesis): no input may give a 5xx or a traceback.

Bodies mix random JSON with the real parameter names and edge values (0, -1, huge, tiny, NaN,
Infinity, wrong types), SMILES-alphabet strings and reaction arrows. Each test runs a fixed number
of examples against one loopback server, so the file takes well under a minute.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scilm.serving.local import server_thread
from scilm.serving.models import load_served_model
from scilm.serving.schema import ClassifierParameters, GenerationParameters
from scilm.serving.server import create_app
from test_serving import classifier_dir, t5_dir  # noqa: F401  (module fixtures)

EDGE_NUMBERS = st.sampled_from([0, 1, -1, 2, 512, 513, 10**30, -(10**30), 1e-300, 1e-30, 0.5, 1.0, 1e300,
                                float("nan"), float("inf"), float("-inf"), True, False])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | EDGE_NUMBERS
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
SMILES_TEXT = st.text(alphabet="CNOSPclnos()[]=#1234567890+-@/\\.~>%*H", max_size=40)
TEXTS = SMILES_TEXT | st.text(max_size=40) | st.sampled_from(["CCO", "MKTAYIAK", "Caption the following SMILES: CCO"])
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def parameters_of(model) -> st.SearchStrategy:
    names = sorted(model.model_fields) + ["unknown_name"]
    values = EDGE_NUMBERS | SCALARS | st.sampled_from(["only_first", "never", "softmax", "retrosynthesis", "no"]) | JSON
    return st.dictionaries(st.sampled_from(names), values, max_size=5)


def bodies(model) -> st.SearchStrategy:
    inputs = TEXTS | st.lists(TEXTS, min_size=0, max_size=3) | JSON
    payload = st.fixed_dictionaries({"inputs": inputs}, optional={"parameters": parameters_of(model) | JSON,
                                                                  "stream": JSON, "options": JSON})
    return payload | JSON


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert "error" in response.json()


def post(client: httpx.Client, path: str, body) -> httpx.Response:
    content = json.dumps(body, allow_nan=True)  # NaN and Infinity too: Python's json.loads accepts them
    return client.post(path, content=content, headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def t5_client(t5_dir):  # noqa: F811
    with server_thread(create_app(load_served_model(t5_dir))) as base, httpx.Client(base_url=base, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def classifier_client(classifier_dir):  # noqa: F811
    with server_thread(create_app(load_served_model(classifier_dir))) as base, \
            httpx.Client(base_url=base, timeout=120) as c:
        yield c


@pytest.mark.slow  # ~6 s; the quick loop keeps the classifier's and /draw's fuzzing
@FUZZ
@given(body=bodies(GenerationParameters))
def test_fuzz_seq2seq_predict(t5_client, body):
    if isinstance(body, dict) and "inputs" in body:  # keep generation short (the default is 256 tokens)
        if body.get("parameters") is None:
            body["parameters"] = {}
        if isinstance(body["parameters"], dict) and "max_length" not in body["parameters"]:
            body["parameters"].setdefault("max_new_tokens", 3)
    check(post(t5_client, "/predict", body))


@FUZZ
@given(body=bodies(ClassifierParameters))
def test_fuzz_classifier_predict(classifier_client, body):
    check(post(classifier_client, "/predict", body))


@FUZZ
@given(body=st.fixed_dictionaries({"smiles": SMILES_TEXT | TEXTS}) | JSON)
def test_fuzz_draw(t5_client, body):
    check(post(t5_client, "/draw", body))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
       query=st.text(alphabet="abc=&%?x0", max_size=12))
def test_fuzz_info(t5_client, method, query):
    response = t5_client.request(method, f"/info?{query}", headers={"content-type": "application/json"})
    assert response.status_code < 500
    if method == "GET":
        assert response.status_code == 200 and response.json()["kind"] == "seq2seq"


EDGES = [0, 1, -1, 2, 10**30, 1e-300, 1e-30, 1e-8, 0.5, 0.999999, 1e300, float("nan"), float("inf"), True]


@pytest.mark.parametrize("name", ["temperature", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                                  "repetition_penalty", "top_k"])
def test_sweep_sampling_parameters_at_their_edges(t5_client, name):
    """Every edge value of every sampling parameter, greedy and sampled: a 200 or a 422 naming it.

    ``temperature: 1e-300`` was a 500 here (float32 logits divided by 0.0); it is refused now.
    """
    for value in EDGES:
        for extra in ({}, {"do_sample": True, "seed": 1}):
            response = post(t5_client, "/predict", {"inputs": "CCO", "parameters": {"max_new_tokens": 2, **extra,
                                                                                    name: value}})
            check(response)
            if response.status_code != 200:
                assert response.status_code == 422 and f"parameters.{name}" in response.json()["error"], response.text
