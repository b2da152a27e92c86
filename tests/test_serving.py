"""scilm serve over real HTTP: uvicorn on a free loopback port, called with httpx and InferenceClient.

Models are tiny and random (an esm2-tiny classifier, a one-layer T5 with a BPE tokenizer trained
on a few strings), built once per module, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from scilm.errors import ScilmError
from scilm.bench.serve import save_random_classifier
from scilm.serving.local import server_process, server_thread
from scilm.serving.limits import RequestError
from scilm.serving.models import load_served_model, model_kind
from scilm.serving.schema import parse_payload
from scilm.serving.server import create_app, serve

JSON = {"content-type": "application/json"}  # POST bodies must say so (a 415 otherwise)
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_random_classifier(tmp_path_factory.mktemp("served") / "classifier", preset="esm2-tiny")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A one-layer T5 and a 200-token BPE tokenizer trained on the Text+Chem prompts, offline."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from scilm.data.textchem import PROMPTS

    corpus = [*PROMPTS.values(), "CCO", "CC(=O)O", "c1ccccc1", "The molecule is an alcohol.", "[Na+]~[OH-]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=128)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("served") / "t5"
    T5ForConditionalGeneration(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    return load_served_model(classifier_dir)


@pytest.fixture(scope="module")
def url(classifier):
    """One classifier server for the module; 20 ms wait so concurrent requests reliably coalesce."""
    with server_thread(create_app(classifier, max_batch_size=32, max_wait_ms=20)) as base:
        yield base


class Hooked:
    """``served`` with test hooks on its model calls, for deterministic tests instead of sleeps.

    ``started`` is set when a model call starts; while ``release`` is clear, calls wait for it (so
    a test can hold requests in flight, then let them go); ``calls`` holds each call's
    ``(start, end)`` (``time.perf_counter``); ``controls`` each call's ``Control`` and ``ended`` its end
    by ``time.monotonic`` (the clock of ``Control.deadline``); ``prepare_threads`` the threads that
    validated requests.
    """

    def __init__(self, served):
        self.served = served
        self.started, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.calls: list[tuple[float, float]] = []
        self.controls: list = []
        self.ended: list[float] = []
        self.prepare_threads: list[str] = []

    def __getattr__(self, name):
        return getattr(self.served, name)

    def prepare(self, payload):
        self.prepare_threads.append(threading.current_thread().name)
        return self.served.prepare(payload)

    def run_batch(self, group, values, control=None):
        start = time.perf_counter()
        self.controls.append(control)
        self.started.set()
        try:
            if not self.release.wait(60):
                raise RuntimeError("the test never released the model call")
            return self.served.run_batch(group, values, control)
        finally:
            self.calls.append((start, time.perf_counter()))
            self.ended.append(time.monotonic())


def wait_until(condition, seconds: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true; a generous bound, since only a broken server never gets there."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:g} s")
        time.sleep(0.02)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def raw_status(base: str, request: bytes) -> int:
    """Send bytes no HTTP client would and return the response status."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        head = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(head.split()[1])


# -- the HF payloads -----------------------------------------------------------------------------

def test_predict_speaks_hf_payloads(url):
    single = httpx.post(f"{url}/predict", json={"inputs": PROTEIN}).json()
    assert len(single) == 1 and [d["label"] for d in single[0]] != []
    scores = [d["score"] for d in single[0]]
    assert {d["label"] for d in single[0]} == {"soluble", "membrane"}
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)

    many = httpx.post(f"{url}/predict", json={"inputs": [PROTEIN, PROTEIN[:20].lower(), "MKT*"]}).json()
    assert len(many) == 3 and all(len(answer) == 2 for answer in many)
    assert many[0] == single[0]  # same sequence, same scores, batched or not

    top = httpx.post(f"{url}/predict", json={"inputs": PROTEIN, "parameters": {"top_k": 1}}).json()
    assert top == [single[0][:1]]
    raw = httpx.post(f"{url}/predict", json={"inputs": PROTEIN, "parameters": {"function_to_apply": "none"}}).json()
    assert sum(d["score"] for d in raw[0]) != pytest.approx(1.0)


def test_huggingface_inference_client(url, monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)  # a local URL is not the Hub
    client = InferenceClient(model=f"{url}/predict")
    answer = client.text_classification(PROTEIN)
    assert {a.label for a in answer} == {"soluble", "membrane"}
    assert client.text_classification(PROTEIN, top_k=1)[0].label == answer[0].label
    assert InferenceClient(base_url=f"{url}/predict").text_classification(PROTEIN)[0].label == answer[0].label
    with pytest.raises(HfHubHTTPError, match="position 3"):
        client.text_classification("MK1")


# -- bad and hostile input -----------------------------------------------------------------------

@pytest.mark.parametrize("body, status, message", [
    ({"inputs": "MKTJAY"}, 422, "invalid residue 'J' .* at position 4"),
    ({"inputs": ["MKT", "MKT АY"]}, 422, r"inputs\[1\]: invalid residue 'А' \(U\+0410 CYRILLIC CAPITAL LETTER A\) at position 4"),
    ({"inputs": "MKTıY"}, 422, "DOTLESS I"),  # 'ı'.upper() == 'I': must not slip through
    ({"inputs": "MK\u200bT"}, 422, "ZERO WIDTH SPACE"),
    ({"inputs": "   "}, 422, "empty sequence"),
    ({"inputs": []}, 422, "empty list"),
    ({"inputs": "M" * 1023}, 422, "1023 residues is over the model's limit of 1022"),
    ({"inputs": ["MKT"] * 65}, 413, "too many inputs: 65"),
    ({"inputs": 5}, 422, "string or a list"),
    ({"inputs": ["MKT", None]}, 422, r"inputs\[1\] is NoneType"),
    ({"text": "MKT"}, 422, '"inputs"'),
    ({"inputs": "MKT", "parameters": {"top_k": 0}}, 422, r"parameters\.top_k: input should be greater than or equal to 1 \(got 0\)"),
    ({"inputs": "MKT", "parameters": {"top_k": 1.5}}, 422, r"parameters\.top_k: input should be a valid integer \(got 1\.5\)"),
    ({"inputs": "MKT", "parameters": {"top_k": "2"}}, 422, r"parameters\.top_k: input should be a valid integer"),
    ({"inputs": "MKT", "parameters": {"top_k": True}}, 422, r"parameters\.top_k: input should be a valid integer"),
    ({"inputs": "MKT", "parameters": {"function_to_apply": "relu"}}, 422, r"parameters\.function_to_apply"),
    ({"inputs": "MKT", "parameters": {"truncation": "no"}}, 422, r"parameters\.truncation: input should be a valid boolean"),
    ({"inputs": "MKT", "stream": True}, 422, "stream: True is not supported"),
    ({"inputs": "MKT", "options": {"wait_for_model": "yes"}}, 422, '"options"'),
    ({"inputs": "MKT", "parameters": {"temperature": 1}}, 422, "unknown parameter"),
])
def test_bad_inputs_are_clear_4xx(url, body, status, message):
    response = httpx.post(f"{url}/predict", json=body)
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()


def test_hostile_inputs_get_4xx_and_the_server_stays_healthy(url):
    huge = b'{"inputs": "' + b"A" * 2_000_000 + b'"}'
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    many = json.dumps({"inputs": ["MKT"] * 100_000}).encode()

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(40):
            yield b"A" * 65536

    cases = {
        "huge body": httpx.post(f"{url}/predict", content=huge, headers=JSON),
        "huge streamed body": httpx.post(f"{url}/predict", content=chunked(), headers=JSON),
        "deep JSON": httpx.post(f"{url}/predict", content=deep, headers=JSON),
        "binary junk": httpx.post(f"{url}/predict", content=bytes(range(256)) * 64, headers=JSON),
        "10^5 sequences": httpx.post(f"{url}/predict", content=many, headers=JSON),
        "look-alike letters": httpx.post(f"{url}/predict", json={"inputs": "МКТАУ"}),  # all Cyrillic
        "not JSON": httpx.post(f"{url}/predict", content=b"inputs=MKT", headers=JSON),
        "huge number": httpx.post(f"{url}/predict", content=b'{"inputs": ' + b"9" * 50_000 + b"}", headers=JSON),
    }
    statuses = {name: r.status_code for name, r in cases.items()}
    statuses["bad Content-Length"] = raw_status(url, b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                                      b"Content-Length: x\r\n\r\n{}")
    statuses["garbage request line"] = raw_status(url, bytes(range(1, 256)) + b"\r\n\r\n")
    assert statuses["huge body"] == statuses["huge streamed body"] == 413
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    for name, response in cases.items():
        if response.headers.get("content-type", "").startswith("application/json"):
            assert "Traceback" not in response.text and "error" in response.json(), name
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.post(f"{url}/predict", json={"inputs": PROTEIN}).status_code == 200
    assert 'status="500"' not in httpx.get(f"{url}/metrics").text


# -- batching, queue, auth -----------------------------------------------------------------------

def test_concurrent_requests_share_forward_calls(classifier):
    """Requests queued together run as one micro-batch, each answer still its own sequence's.

    The model is held busy (a hook, not a race against the clock) while 16 requests queue; once
    released they run in one call.
    """
    served = Hooked(classifier)
    alone = {}
    with server_thread(create_app(served, max_batch_size=32, max_wait_ms=0)) as base:
        for i in (0, 15):
            alone[i] = httpx.post(f"{base}/predict", json={"inputs": PROTEIN[: 20 + i]}).json()
        served.release.clear()
        served.started.clear()
        blocker = threading.Thread(target=httpx.post, args=(f"{base}/predict",), kwargs={"json": {"inputs": "MKT"}})
        blocker.start()
        assert served.started.wait(30)
        calls_before = metric(base, "scilm_batch_size_count")

        async def burst():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                sent = [asyncio.ensure_future(client.post("/predict", json={"inputs": PROTEIN[: 20 + i]}))
                        for i in range(16)]
                await asyncio.to_thread(wait_until, lambda: metric(base, "scilm_queue_depth") == 17,
                                        30, "16 requests queued behind the held call")
                served.release.set()
                return await asyncio.gather(*sent)

        responses = asyncio.run(burst())
        blocker.join(30)
        assert all(r.status_code == 200 for r in responses)
        for i in (0, 15):  # batched with others: its own answer (padding moves scores by float rounding only)
            got, want = responses[i].json()[0], alone[i][0]
            assert [d["label"] for d in got] == [d["label"] for d in want]
            assert [d["score"] for d in got] == pytest.approx([d["score"] for d in want], abs=1e-6)
        assert metric(base, "scilm_batch_size_count") - calls_before == 2  # the held call, then all 16 in one
        assert metric(base, "scilm_batch_size_bucket{le=\"16.0\"}") - metric(base, "scilm_batch_size_bucket{le=\"8.0\"}") == 1
        text = httpx.get(f"{base}/metrics").text
    for name in ("scilm_requests_total", "scilm_request_latency_seconds_bucket", "scilm_queue_depth",
                 "scilm_errors_total", "scilm_batch_size_bucket"):
        assert name in text


def test_full_queue_answers_503_with_retry_after(classifier):
    served = Hooked(classifier)
    served.release.clear()  # the first request's call is held: its three inputs fill the queue
    app = create_app(served, max_batch_size=4, max_wait_ms=0, max_queue=3)

    async def overload(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            first = asyncio.create_task(client.post("/predict", json={"inputs": ["MKT", "MKV", "MKL"]}))
            await asyncio.to_thread(served.started.wait, 30)
            second = await client.post("/predict", json={"inputs": "MKT"})
            served.release.set()
            return await first, second

    with server_thread(app) as base:
        first, second = asyncio.run(overload(base))
        assert first.status_code == 200
        assert second.status_code == 503 and int(second.headers["Retry-After"]) >= 1
        assert "overloaded" in second.json()["error"]
        assert httpx.post(f"{base}/predict", json={"inputs": ["MKT"] * 4}).status_code == 413  # > max_queue


def test_no_batching_runs_one_input_per_forward(classifier):
    with server_thread(create_app(classifier, batching=False)) as base:
        assert httpx.post(f"{base}/predict", json={"inputs": [PROTEIN, "MKT", "MKV"]}).status_code == 200
        assert metric(base, "scilm_batch_size_count") == 3
        assert httpx.get(f"{base}/info").json()["batching"] is False


def test_api_key(classifier, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    with server_thread(create_app(classifier, api_key="s3cret")) as base:
        assert httpx.post(f"{base}/predict", json={"inputs": "MKT"}).status_code == 401
        wrong = httpx.post(f"{base}/predict", json={"inputs": "MKT"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        good = httpx.post(f"{base}/predict", json={"inputs": "MKT"}, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert InferenceClient(model=f"{base}/predict", token="s3cret").text_classification("MKT")
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/health").status_code == httpx.get(f"{base}/ready").status_code == 200
        assert httpx.get(f"{base}/").status_code == 200


def test_serve_refuses_unsafe_settings(classifier_dir, monkeypatch, caplog):
    monkeypatch.delenv("SCILM_TEST_KEY", raising=False)
    with pytest.raises(ScilmError, match="SCILM_TEST_KEY"):
        serve(str(classifier_dir), api_key_env="SCILM_TEST_KEY")
    with pytest.raises(ScilmError, match="no such model directory"), caplog.at_level("WARNING"):
        serve("/nonexistent/model", host="0.0.0.0")
    assert "without an API key" in caplog.text


# -- model kinds -----------------------------------------------------------------------------------

def test_model_kind_and_safetensors_only(classifier_dir, t5_dir, tmp_path):
    assert model_kind(classifier_dir) == "classifier" and model_kind(t5_dir) == "seq2seq"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((classifier_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ScilmError, match="safetensors only"):
        load_served_model(pickled)
    (pickled / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ScilmError, match="cannot serve"):
        load_served_model(pickled)


def test_seq2seq_endpoint_and_draw(t5_dir):
    with server_thread(create_app(load_served_model(t5_dir), max_wait_ms=5)) as base:
        task = {"task": "retrosynthesis", "max_new_tokens": 6}
        one = httpx.post(f"{base}/predict", json={"inputs": "CCO", "parameters": task})
        assert one.status_code == 200 and isinstance(one.json()[0]["generated_text"], str) and len(one.json()) == 1
        two = httpx.post(f"{base}/predict", json={"inputs": ["CCO", "c1ccccc1"], "parameters": {**task, "num_beams": 2}})
        assert len(two.json()) == 2
        prompt = httpx.post(f"{base}/predict", json={"inputs": "Caption the following SMILES: CCO",
                                                     "parameters": {"max_new_tokens": 4}})
        assert prompt.status_code == 200

        def error(body):
            response = httpx.post(f"{base}/predict", json=body)
            assert response.status_code == 422, response.text
            return response.json()["error"]

        assert "invalid SMILES character ' ' (U+0020 SPACE) at position 3" in error(
            {"inputs": "CC O", "parameters": {"task": "forward-prediction"}})
        assert "unknown task" in error({"inputs": "CCO", "parameters": {"task": "translate"}})
        assert "over the model's limit of 128" in error({"inputs": "word " * 300})
        assert "num_beams" in error({"inputs": "CCO", "parameters": {"num_beams": 50}})
        assert "empty input" in error({"inputs": " "})
        assert "control character" in error({"inputs": "CC\x00O"})

        drawn = httpx.post(f"{base}/draw", json={"smiles": "OCC"}).json()
        assert drawn["canonical"] == "CCO" and drawn["svg"].lstrip().startswith("<?xml")
        assert httpx.post(f"{base}/draw", json={"smiles": "CC(=O)O.OCC>>CC(=O)OCC"}).status_code == 200
        bad = httpx.post(f"{base}/draw", json={"smiles": "C1CC"})
        assert bad.status_code == 422 and "cannot parse" in bad.json()["error"]
        assert httpx.get(f"{base}/info").json()["kind"] == "seq2seq"


# -- the CLI process: startup, and graceful shutdown with a request in flight -----------------------

@pytest.mark.slow  # a real process: ~10 s
def test_cli_serve_finishes_in_flight_requests_on_sigterm(classifier_dir, tmp_path):
    log = tmp_path / "server.log"
    with server_process(classifier_dir, args=("--max-wait-ms", "5000"), log=log) as (base, process):
        result = {}

        def slow_request():  # waits 5 s for its batch to fill: in flight when SIGTERM lands
            result["response"] = httpx.post(f"{base}/predict", json={"inputs": PROTEIN}, timeout=30)

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_until(lambda: metric(base, "scilm_queue_depth") == 1, 30, "the request in the server")
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    assert result["response"].status_code == 200, result["response"].text
    assert len(result["response"].json()[0]) == 2
    assert "serving the classifier" in log.read_text()


def test_bench_load_loop_counts_requests_and_batches(url):
    from scilm.bench.serve import _batch_stats, _load, _memory_summary, bench_sequences

    sequences = [s[:60] for s in bench_sequences(8)]
    before = _batch_stats(httpx.get(f"{url}/metrics").text)
    row = asyncio.run(_load(url, 4, 12, sequences))
    after = _batch_stats(httpx.get(f"{url}/metrics").text)
    assert row["requests"] == 12 and row["errors"] == 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert after[1] - before[1] == 12 and after[0] - before[0] <= 12
    assert _memory_summary(500.0, [480, 510, 505, 520])["rss_flat"]
    assert not _memory_summary(500.0, [500, 700, 900, 1100])["rss_flat"]


def test_cli_serve_user_errors_are_one_line(run_cli, tmp_path):
    missing = run_cli("serve", "--model", tmp_path / "nope")
    assert missing.exit_code == 2 and "no such model directory" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "config.json").write_text("{}")
    unknown = run_cli("serve", "--model", tmp_path)
    assert unknown.exit_code == 2 and "cannot serve" in unknown.stderr


# -- Hugging Face parameter semantics (issue 11, case 6) -------------------------------------------

def test_classifier_top_k_is_a_cap(url, monkeypatch):
    """HF semantics: top_k larger than the number of labels returns every label, best first (200)."""
    from huggingface_hub import InferenceClient, constants

    every = httpx.post(f"{url}/predict", json={"inputs": PROTEIN}).json()
    for top_k in (2, 5, 10**6):
        capped = httpx.post(f"{url}/predict", json={"inputs": PROTEIN, "parameters": {"top_k": top_k}})
        assert capped.status_code == 200 and capped.json() == every
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    answer = InferenceClient(model=f"{url}/predict").text_classification(PROTEIN, top_k=5)
    assert [(a.label, a.score) for a in answer] == [(d["label"], d["score"]) for d in every[0]]
    assert InferenceClient(model=f"{url}/predict").text_classification(PROTEIN, top_k=1)[0].label == every[0][0]["label"]
    info = httpx.get(f"{url}/info").json()["parameters"]
    assert info["top_k"]["minimum"] == 1 and "cap" in info["top_k"]["description"]


@pytest.fixture(scope="module")
def t5_served(t5_dir):
    return load_served_model(t5_dir)


@pytest.fixture(scope="module")
def t5_url(t5_served):
    with server_thread(create_app(t5_served, max_wait_ms=20)) as base:
        yield base


PROMPT = "Caption the following SMILES: CCO"


def reference(served, source: str, seed: int | None = None, **generation) -> list[str]:
    """What Transformers' generate gives for one source, decoded as the server decodes."""
    import torch

    from scilm.inference.generate import decode

    encoded = served.tokenizer(source, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    out = served.model.generate(**encoded, **generation)
    return [decode(served.tokenizer, row.tolist(), smiles=False) for row in out]


def generated(base: str, inputs, **parameters):
    response = httpx.post(f"{base}/predict", json={"inputs": inputs, "parameters": parameters}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_max_new_tokens_yields_exactly_what_generate_gives(t5_url, t5_served):
    """max_new_tokens: N is N new tokens (not N - 1: T5's max_length counts its start token)."""
    encoded = t5_served.tokenizer(PROMPT, return_tensors="pt")
    for n in (1, 2, 5, 9):
        ids = t5_served.model.generate(**encoded, max_new_tokens=n, do_sample=False, num_beams=1)[0]
        assert len(ids) - 1 == n  # the random model emits no end token this early: N tokens come
        want = reference(t5_served, PROMPT, max_new_tokens=n, do_sample=False, num_beams=1)
        assert generated(t5_url, PROMPT, max_new_tokens=n) == [{"generated_text": want[0]}]
        # Transformers' max_length: the decoder sequence with its start token, so one token fewer
        assert generated(t5_url, PROMPT, max_length=n + 1) == [{"generated_text": want[0]}]
    shorter = reference(t5_served, PROMPT, max_new_tokens=8, do_sample=False, num_beams=1)
    assert generated(t5_url, PROMPT, max_new_tokens=9)[0]["generated_text"] != shorter[0]


def test_generate_cli_max_length_counts_new_tokens(t5_served):
    """``scilm generate --max-length N`` (generate_from_sources) writes N tokens, as its help says."""
    from scilm.inference.generate import generate_from_sources

    for n in (1, 4):
        want = reference(t5_served, PROMPT, max_new_tokens=n, do_sample=False, num_beams=2)
        assert generate_from_sources(t5_served.model, t5_served.tokenizer, [PROMPT], False, 2, n, 1) == want


def test_sampling_parameters_are_honoured_and_seeded(t5_url, t5_served):
    sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_new_tokens": 12}
    want = reference(t5_served, PROMPT, seed=123, **sampling)
    assert generated(t5_url, PROMPT, seed=123, **sampling) == [{"generated_text": want[0]}]
    # a sampling parameter alone asks for sampling (TGI); unset filters are off, not Transformers' top_k 50
    implied = reference(t5_served, PROMPT, seed=7, do_sample=True, temperature=1.5, top_k=0, max_new_tokens=12)
    assert generated(t5_url, PROMPT, seed=7, temperature=1.5, max_new_tokens=12) == [{"generated_text": implied[0]}]
    # batching changes cost, not the draw: the same seeded input alone and among other requests
    alone = generated(t5_url, PROMPT, seed=5, **sampling)[0]

    async def concurrent():
        async with httpx.AsyncClient(base_url=t5_url, timeout=60) as client:
            bodies = [{"inputs": PROMPT if i == 3 else f"Caption the following SMILES: {'C' * (i + 1)}",
                       "parameters": {**sampling, "seed": 5 if i == 3 else i}} for i in range(6)]
            return await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))

    assert asyncio.run(concurrent())[3].json()[0] == alone
    greedy = {"max_new_tokens": 8, "repetition_penalty": 1.3, "num_beams": 2, "early_stopping": True}
    assert generated(t5_url, PROMPT, **greedy) == [{"generated_text": reference(t5_served, PROMPT, do_sample=False,
                                                                                **greedy)[0]}]


def test_identical_inputs_of_one_sampled_request_get_their_own_seeds(t5_url, t5_served):
    """Input i of a sampled request draws from input_seed(seed, i): identical inputs of one request get
    different samples (they all drew from one seed before), each is what generate gives from that seed,
    and neither the other requests in the micro-batch nor the input's neighbours change it."""
    import numpy as np

    from scilm.serving.models import input_seed
    from scilm.serving.schema import GenerationParameters, parse_payload

    # the derivation, pinned: input 0 is the request's seed, input i NumPy's SeedSequence child i
    assert input_seed(5, 0) == 5
    assert input_seed(5, 3) == int(np.random.SeedSequence(5, spawn_key=(3,)).generate_state(1, np.uint64)[0]) >> 1
    assert len({input_seed(5, i) for i in range(64)}) == 64 and input_seed(5, 1) != input_seed(6, 0)
    assert all(0 <= input_seed(2**63 - 1, i) < 2**63 for i in range(8))

    sampling = {"do_sample": True, "temperature": 0.7, "top_k": 20, "max_new_tokens": 12}
    want = [reference(t5_served, PROMPT, seed=input_seed(5, i), **sampling)[0] for i in range(4)]
    assert len(set(want)) == 4  # four seeds, four different samples of this random model
    same = generated(t5_url, [PROMPT] * 4, seed=5, **sampling)
    assert [answer["generated_text"] for answer in same] == want
    # its place in the request decides an input's seed, not its neighbours
    mixed = generated(t5_url, ["Caption the following SMILES: CC", PROMPT, PROMPT], seed=5, **sampling)
    assert [answer["generated_text"] for answer in mixed[1:]] == want[1:3]

    async def among_others():  # one group: these requests share micro-batches
        async with httpx.AsyncClient(base_url=t5_url, timeout=60) as client:
            bodies = [{"inputs": [PROMPT] * 4 if i == 2 else [f"Caption the following SMILES: {'C' * (i + 1)}"] * 2,
                       "parameters": {**sampling, "seed": 5 if i == 2 else i}} for i in range(5)]
            return await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))

    assert asyncio.run(among_others())[2].json() == same
    # no seed given: the request draws one, and its inputs still get distinct seeds derived from it
    payload = parse_payload({"inputs": [PROMPT] * 3, "parameters": sampling}, 64, GenerationParameters)
    seeds = [source.seed for source in t5_served.prepare(payload)[1]]
    assert seeds == [input_seed(seeds[0], i) for i in range(3)] and len(set(seeds)) == 3
    greedy = parse_payload({"inputs": [PROMPT] * 2, "parameters": {"max_new_tokens": 3}}, 64, GenerationParameters)
    assert [source.seed for source in t5_served.prepare(greedy)[1]] == [None, None]


def test_num_return_sequences_and_nested_generate_parameters(t5_url, t5_served):
    beams = reference(t5_served, PROMPT, num_beams=3, num_return_sequences=3, max_new_tokens=6, do_sample=False)
    one = generated(t5_url, PROMPT, num_beams=3, num_return_sequences=3, max_new_tokens=6)
    assert one == [{"generated_text": text} for text in beams]  # one input: its list alone, as the pipeline
    many = generated(t5_url, [PROMPT, PROMPT], num_beams=3, num_return_sequences=3, max_new_tokens=6)
    assert many == [one, one]
    nested = generated(t5_url, PROMPT, generate_parameters={"num_beams": 3, "max_new_tokens": 6},
                       num_return_sequences=3)
    assert nested == one
    sampled = generated(t5_url, PROMPT, do_sample=True, num_return_sequences=4, seed=3, max_new_tokens=6)
    assert sampled == [{"generated_text": text} for text in reference(
        t5_served, PROMPT, seed=3, do_sample=True, num_return_sequences=4, max_new_tokens=6, top_k=0)]


@pytest.mark.parametrize("parameters, message", [
    ({"do_sample": False, "temperature": 0.5}, r"parameters\.temperature: a sampling parameter, but do_sample is false"),
    ({"temperature": 0}, r"parameters\.temperature: input should be greater than or equal to 0\.01 \(got 0\)"),
    ({"temperature": 1e-300}, r"parameters\.temperature: input should be greater than or equal to 0\.01"),
    ({"temperature": "hot"}, r"parameters\.temperature: input should be a valid number"),
    ({"top_p": 0}, r"parameters\.top_p: input should be greater than 0"),
    ({"top_p": 1.5}, r"parameters\.top_p: input should be less than or equal to 1"),
    ({"top_k": 0}, r"parameters\.top_k: input should be greater than or equal to 1"),
    ({"num_beams": 2, "num_return_sequences": 3}, r"parameters\.num_return_sequences: 3 is over num_beams \(2\)"),
    ({"num_return_sequences": 11, "do_sample": True}, r"parameters\.num_return_sequences: input should be less than or equal to 10"),
    ({"seed": "1"}, r"parameters\.seed: input should be a valid integer"),
    ({"seed": 1.5}, r"parameters\.seed: input should be a valid integer"),
    ({"seed": True}, r"parameters\.seed: input should be a valid integer"),
    ({"seed": -1}, r"parameters\.seed: input should be greater than or equal to 0"),
    ({"max_new_tokens": 0}, r"parameters\.max_new_tokens: input should be greater than or equal to 1"),
    ({"max_new_tokens": 513}, r"parameters\.max_new_tokens: input should be less than or equal to 512"),
    ({"max_length": 1}, r"parameters\.max_length: input should be greater than or equal to 2"),
    ({"max_new_tokens": 5, "max_length": 6}, r"parameters\.max_length: give max_new_tokens or max_length"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, r"parameters\.min_new_tokens: 9 is over the maximum of 4"),
    ({"repetition_penalty": 0}, r"parameters\.repetition_penalty: input should be greater than or equal to 0\.01"),
    ({"early_stopping": "soon"}, r"parameters\.early_stopping"),
    ({"details": True}, r"parameters\.details: True is not supported"),
    ({"return_full_text": True}, r"parameters\.return_full_text: True is not supported"),
    ({"stop": ["\n"]}, r"parameters\.stop: \['\\n'\] is not supported"),
    ({"best_of": 2}, r"parameters\.best_of: 2 is not supported"),
    ({"watermark": 1}, r"parameters\.watermark: 1 is not supported"),  # 1 is not false
    ({"num_beam_groups": 2}, r"parameters\.num_beam_groups: 2 is not supported"),
    ({"generate_parameters": {"num_beams": 3}, "num_beams": 2}, r"generate_parameters\.num_beams: 3 disagrees"),
    ({"generate_parameters": {"temprature": 1.0}}, r"parameters\.generate_parameters\.temprature: unknown parameter"),
    ({"truncation": "only_second"}, r"parameters\.truncation"),
    ({"temprature": 0.5}, r"unknown parameter\(s\) \['temprature'\] for a seq2seq model"),
])
def test_generation_parameters_out_of_bounds_are_named(t5_url, parameters, message):
    response = httpx.post(f"{t5_url}/predict", json={"inputs": PROMPT, "parameters": parameters})
    assert response.status_code == 422, response.text
    assert re.search(message, response.json()["error"]), response.json()
    assert response.json()["error_type"] == "validation"


def test_neutral_tgi_parameters_and_stream_false_are_accepted(t5_url, t5_served):
    want = generated(t5_url, PROMPT, max_new_tokens=5)
    neutral = {"details": False, "return_full_text": False, "best_of": 1, "watermark": False, "stop": [],
               "decoder_input_details": False, "truncate": None, "use_cache": False, "num_beam_groups": 1}
    assert generated(t5_url, PROMPT, max_new_tokens=5, **neutral) == want  # use_cache: cost, not answer
    streamed = httpx.post(f"{t5_url}/predict", json={"inputs": PROMPT, "stream": False,
                                                     "parameters": {"max_new_tokens": 5}})
    assert streamed.status_code == 200 and streamed.json() == want
    info = httpx.get(f"{t5_url}/info").json()["parameters"]
    assert info["top_p"]["exclusiveMinimum"] == 0 and info["top_p"]["maximum"] == 1
    assert info["max_new_tokens"]["maximum"] == 512 and "Not supported" in info["details"]["description"]
    long = "Caption the following SMILES: " + "C" * 400
    assert httpx.post(f"{t5_url}/predict", json={"inputs": long}).status_code == 422
    from scilm.inference.generate import decode

    encoded = t5_served.tokenizer(long, truncation=True, max_length=128, return_tensors="pt")  # the model's limit
    ids = t5_served.model.generate(**encoded, max_new_tokens=3, do_sample=False, num_beams=1)[0]
    cut = generated(t5_url, long, truncation="only_first", max_new_tokens=3)
    assert cut == [{"generated_text": decode(t5_served.tokenizer, ids.tolist(), smiles=False)}]


def test_inference_client_text_generation(t5_url, t5_served, monkeypatch):
    """huggingface_hub's InferenceClient.text_generation, parameters and all, against the seq2seq server."""
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import ValidationError

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    client = InferenceClient(model=f"{t5_url}/predict")
    want = reference(t5_served, PROMPT, seed=11, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                     repetition_penalty=1.1, max_new_tokens=7)
    text = client.text_generation(PROMPT, do_sample=True, temperature=0.8, top_p=0.95, repetition_penalty=1.1,
                                  max_new_tokens=7, seed=11, stream=False, details=False, return_full_text=False)
    assert text == want[0]
    greedy = reference(t5_served, PROMPT, max_new_tokens=4, do_sample=False, num_beams=1)
    assert client.text_generation(PROMPT, max_new_tokens=4) == greedy[0]
    with pytest.raises(ValidationError, match=r"parameters\.top_p: input should be less than or equal to 1"):
        client.text_generation(PROMPT, top_p=1.5)


def _save_with(classifier_dir: Path, out: Path, **config_fields) -> Path:
    """A copy of the served classifier with ``config_fields`` set in its config.json (same weights)."""
    import shutil

    shutil.copytree(classifier_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(config_fields)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_served_answers_are_predicts_for_regression_and_multilabel_models(classifier_dir, tmp_path):
    """The server answers what ``scilm predict`` writes: a regression model's values in target units
    (never a sigmoid of the standardised output), a multi-label model's labels over their thresholds."""
    from scilm.inference.predict import output_function

    served = load_served_model(classifier_dir)
    logits = served.run_batch(None, [PROTEIN])[0]
    regression = load_served_model(_save_with(classifier_dir, tmp_path / "regression", problem_type="regression",
                                              scilm_target_mean=5.0, scilm_target_std=2.0))
    answer = regression.respond(parse_payload({"inputs": PROTEIN}, 8, regression.parameters), [logits])[0]
    assert [a["score"] for a in answer] == pytest.approx([x * 2.0 + 5.0 for x in logits], abs=1e-5)
    assert [a["label"] for a in answer] == regression.labels  # values in label order, not ranked
    with pytest.raises(RequestError, match="regression model"):
        regression.prepare(parse_payload({"inputs": PROTEIN, "parameters": {"function_to_apply": "sigmoid"}}, 8,
                                         regression.parameters))
    thresholds = {"soluble": 0.0, "membrane": 1.0}  # every score is >= 0 and below 1
    multi = load_served_model(_save_with(classifier_dir, tmp_path / "multi", problem_type="multi_label_classification",
                                         scilm_thresholds=thresholds))
    answer = multi.respond(parse_payload({"inputs": PROTEIN}, 8, multi.parameters), [logits])[0]
    probabilities = output_function(multi.model.config)(torch.tensor([logits]))[0].tolist()
    assert {a["label"]: a["score"] for a in answer} == pytest.approx(dict(zip(multi.labels, probabilities)))
    assert {a["label"]: a["predicted"] for a in answer} == {"soluble": True, "membrane": False}
    assert multi.info()["thresholds"] == thresholds and multi.info()["task"] == "multi-label"


def test_served_in_a_precision_mode_answers_what_predict_answers_in_it(classifier_dir, monkeypatch):
    """``scilm serve --precision/--quantize``: the mode is chosen by predict's probe and guard, and a served
    protein's logits are exactly ``predict``'s in that mode (the same weights, kernels and batching)."""
    from scilm.inference import precision as P
    from scilm.inference.predict import policy_logits
    from scilm.models.protein import load_trained_classifier

    monkeypatch.setattr(P, "_time_forward", lambda mode, run, repeats: {"fp32": 1.0}.get(mode, 0.5))
    monkeypatch.setattr(P, "ABANDON_FACTOR", float("inf"))
    monkeypatch.setenv("SCILM_CACHE_DIR", str(classifier_dir.parent / "cache"))
    served = load_served_model(classifier_dir, precision="bf16-weights")
    net, tokenizer = load_trained_classifier(str(classifier_dir))
    mode = getattr(served.model, "scilm_inference_mode", "fp32")  # fp32 only if the guard refused bf16 here
    same = P.apply_mode(net, mode)
    if mode != "fp32":  # with predict's fp32 answers near a decision boundary, the probe's delta
        P.with_fp32_fallback(same, net, served.model.scilm_fp32_fallback.delta)
    expected = policy_logits(same, tokenizer, [PROTEIN, PROTEIN[:30]], served.policy)
    assert served.run_batch(None, [PROTEIN, PROTEIN[:30]]) == expected.tolist()
    if mode == "bf16-weights":
        assert next(served.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ScilmError, match="precision must be one of"):
        load_served_model(classifier_dir, precision="fp16")


def test_a_seq2seq_model_is_served_in_fp32_only(t5_dir):
    with pytest.raises(ScilmError, match="seq2seq model is served in fp32"):
        load_served_model(t5_dir, precision="bf16")
