"""``scilm bench serve --abuse``: replay each kind of abuse of issue 12 against a real server, on loopback.

A ``scilm serve`` process is started on 127.0.0.1 with a small seq2seq model (the ``t5-tiny``
shape, random weights, tokenizer trained on the Text+Chem prompts: nothing is downloaded), and
each kind below is replayed against it in turn while a thread probes ``GET /health`` on a fresh
connection every 100 ms. Every request has a client timeout; one that runs out is **hung**. The
whole run is bounded (about 2 minutes on 2 cores): each kind sends a fixed number of requests.

A request is *handled cleanly* when the server answers as it should for that kind: the right
2xx, a 4xx with a JSON ``error``, a 503 with JSON and ``Retry-After`` (overload, time limit,
shutdown), or (for half-sent requests) the server closing the connection in time. Any other 5xx
or an answer of the wrong kind is counted apart.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scilm.bench.report import machine_name, markdown_table

JSON = {"content-type": "application/json"}
PROMPT = "Caption the following SMILES: CCO"
MAX_BATCH_SECONDS = 5.0  # the server's time limit per model call in this run (the default is 60 s)
HUNG_AFTER = MAX_BATCH_SECONDS + 15  # client timeout: no answer by then is a hung request


@dataclass
class Kind:
    """The tally of one kind of abuse: requests tried, handled cleanly, answered 5xx, hung, and what the others were."""

    name: str
    tried: int = 0
    clean: int = 0
    server_errors: int = 0  # 5xx other than a 503 with JSON + Retry-After
    hung: int = 0
    other: list[str] = field(default_factory=list)  # what the unclean ones were

    def record(self, ok: bool, what: str = "") -> None:
        """One request: ``ok`` if handled cleanly, else ``what`` happened (``"500"``, ``"hung"``, ...)."""
        self.tried += 1
        if ok:
            self.clean += 1
        elif what.startswith("5"):
            self.server_errors += 1
            self.other.append(what)
        elif what == "hung":
            self.hung += 1
        else:
            self.other.append(what)


class HealthProbe:
    """GET /health on a fresh connection every ``every`` seconds, in a thread: latencies (s) and failures."""

    def __init__(self, base: str, every: float = 0.1):
        self.base, self.every, self.latencies, self.failures = base, every, [], 0
        self.baseline: list[float] = []  # latencies before any abuse (phase "start")
        self.phase, self.failed_in = "start", []  # the kind running when a probe failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                status = httpx.get(f"{self.base}/health", timeout=10).status_code
                what = str(status)
            except httpx.HTTPError as exc:
                status, what = 0, repr(exc)
            (self.baseline if self.phase == "start" else self.latencies).append(time.perf_counter() - start)
            if status != 200:
                self.failures += 1
                self.failed_in.append(f"{self.phase}: {what}")
            self._stop.wait(self.every)

    def start(self):
        """Start probing (in a daemon thread)."""
        self._thread.start()

    def stop(self):
        """Stop probing and wait for the probe under way (at most 15 s)."""
        self._stop.set()
        self._thread.join(15)

    def summary(self) -> dict:
        """Probes, failures (and the kinds they failed in), idle p50 and p50/p99/max latencies during abuse, in ms."""
        ordered = sorted(self.latencies)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
        idle = sorted(self.baseline) or [0.0]
        return {"probes": len(ordered), "failures": self.failures, "failed_in": self.failed_in[:5],
                "idle_p50_ms": round(idle[len(idle) // 2] * 1000, 1),
                "p50_ms": round(pick(0.5), 1),
                "p99_ms": round(pick(0.99), 1), "max_ms": round(ordered[-1] * 1000, 1)}


def cage_smiles(a: int = 7, b: int = 8, c: int = 5) -> str:
    """A valid SMILES of an a x b x c cage of sulfur atoms: 7 x 8 x 5 is 280 atoms and 598 rings, which
    RDKit took 2.8 s to draw here (holding the GIL throughout)."""
    from rdkit import Chem

    mol = Chem.RWMol()
    index = {}
    for i in range(a):
        for j in range(b):
            for k in range(c):
                index[i, j, k] = mol.AddAtom(Chem.Atom(16))
    for (i, j, k), atom in index.items():
        for step in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            other = (i + step[0], j + step[1], k + step[2])
            if other in index:
                mol.AddBond(atom, index[other], Chem.BondType.SINGLE)
    result = mol.GetMol()
    Chem.SanitizeMol(result)
    return Chem.MolToSmiles(result)


def save_tiny_t5(out: Path) -> Path:
    """The ``t5-tiny`` shape with random weights and a tokenizer trained on the Text+Chem prompts."""
    from scilm.data.textchem import PROMPTS
    from scilm.models.seq2seq import load_seq2seq_model

    corpus = [*PROMPTS.values(), "CCO", "CC(=O)O", "c1ccccc1", "The molecule is an alcohol.", "[Na+]~[OH-]"] * 4
    model, tokenizer = load_seq2seq_model("t5-tiny", corpus=corpus, vocab_size=300)
    from scilm.models.saving import save_model

    save_model(model, out)
    tokenizer.save_pretrained(str(out))
    return out


def _classify(response: httpx.Response, expected: tuple[int, ...]) -> tuple[bool, str]:
    status = response.status_code
    what = f"{status}: {response.text[:120]}"
    if status not in expected:
        return False, what
    if status >= 400:
        try:
            if "error" not in response.json():
                return False, what
        except ValueError:
            return False, what
        if status == 503 and "retry-after" not in response.headers:
            return False, what
    return True, what


async def _requests(base: str, kind: Kind, bodies: list, expected: tuple[int, ...], path: str = "/predict",
                    headers: dict | None = None, timeout: float = HUNG_AFTER) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        async def one(body):
            try:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                response = await client.post(path, content=content, headers=headers or JSON)
            except httpx.TimeoutException:
                kind.record(False, "hung")
                return
            except httpx.HTTPError as exc:
                kind.record(False, repr(exc))
                return
            kind.record(*_classify(response, expected))

        await asyncio.gather(*(one(body) for body in bodies))


def _half_sent(base: str, kind: Kind, n: int, hold: float, body: bool) -> None:
    """``n`` connections that send part of a request and stall; clean = the server closed (or answered 408) in time."""
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    partial = (b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n{\"inputs\": \"MK" if body else b"POST /predict HTTP/1.1\r\nHost: loc")
    for _ in range(n):
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(partial)
            sockets.append(sock)
        except OSError:  # refused or reset at once: the cap at work
            kind.record(True)
    deadline = time.monotonic() + hold
    for sock in sockets:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(200)
            kind.record(data == b"" or data.startswith(b"HTTP/1.1 408"), data[:40].decode("latin-1"))
        except (TimeoutError, socket.timeout):
            kind.record(False, "hung")
        except OSError:  # reset: closed by the server
            kind.record(True)
        finally:
            sock.close()


def _run_kinds(base: str, kinds: dict[str, Kind], probe: HealthProbe) -> None:
    from scilm.serving.draw import MAX_ATOMS

    def run(name, coroutine):
        kinds.setdefault(name, Kind(name))
        probe.phase = name
        asyncio.run(coroutine(kinds[name]))

    long = {"num_beams": 10, "max_new_tokens": 512, "min_new_tokens": 512}
    # 7. compute: the request (refused up front), one that runs into the time limit, abandoned ones
    run("7 over-budget request (64 x 10 beams x 512 tokens)",
        lambda k: _requests(base, k, [{"inputs": ["CCO"] * 64, "parameters": long}] * 5, (422,)))
    run("7 request past the time limit (--max-batch-seconds)",
        lambda k: _requests(base, k, [{"inputs": PROMPT, "parameters": {**long, "num_beams": 2, "max_new_tokens": 300,
                                                                        "min_new_tokens": 300}}] * 2, (503,)))
    kind = kinds.setdefault("7 abandoned requests (client leaves after 1 s)", Kind("7 abandoned"))
    probe.phase = "7 abandoned"

    async def abandon(k):
        async with httpx.AsyncClient(base_url=base, timeout=1.0) as client:
            async def leave():
                try:
                    await client.post("/predict", json={"inputs": PROMPT, "parameters": long})
                except httpx.TimeoutException:
                    pass
            await asyncio.gather(*(leave() for _ in range(5)))
        started = time.perf_counter()  # the server must be free again soon: the work was dropped
        async with httpx.AsyncClient(base_url=base, timeout=HUNG_AFTER) as client:
            response = await client.post("/predict", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
        for _ in range(5):
            k.record(response.status_code == 200 and time.perf_counter() - started < 3,
                     f"{response.status_code} after {time.perf_counter() - started:.1f} s")

    asyncio.run(abandon(kind))
    # 8. idle and half-sent connections
    kinds["8 half-sent headers (1000 connections)"] = Kind("8 half-sent headers")
    probe.phase = "8 half-sent headers"
    _half_sent(base, kinds["8 half-sent headers (1000 connections)"], 1000, hold=15, body=False)
    kinds["8 half-sent bodies (100 connections)"] = Kind("8 half-sent bodies")
    probe.phase = "8 half-sent bodies"
    _half_sent(base, kinds["8 half-sent bodies (100 connections)"], 100, hold=15, body=True)
    # 9. CPU work: drawings (bounded, one process) and twenty ~1 MiB bodies
    heavy = "C"
    for _ in range(7):
        heavy = f"C({heavy})({heavy})"  # a 255-atom dendrimer: valid, within bounds, slow to lay out
    cage = cage_smiles(4, 4, 4)  # 64 atoms, 108 rings: over the ring bound
    run("9 heavy drawings (255 atoms, 12 at once)",
        lambda k: _requests(base, k, [{"smiles": heavy}] * 12, (200, 503), path="/draw"))
    run("9 drawings over the bounds",
        lambda k: _requests(base, k, [{"smiles": cage}, {"smiles": "C" * (MAX_ATOMS + 1)}] * 3, (422,), path="/draw"))
    big = ('{"inputs": [' + ",".join(['"' + "CCO" * 5000 + '"'] * 64) + "]}").encode()  # 0.96 MB, inputs too long
    run("9 twenty ~1 MiB bodies", lambda k: _requests(base, k, [big] * 20, (422,)))
    # 10. inputs that were 500s
    run("10 /draw reactions of 2 or 4 parts",
        lambda k: _requests(base, k, [{"smiles": "C>C>C>C"}, {"smiles": "C>"}, {"smiles": "C>>>C"}], (422,), "/draw"))
    run("10 max_new_tokens 1, max_length 2, tiny temperature",
        lambda k: _requests(base, k, [{"inputs": PROMPT, "parameters": {"max_new_tokens": 1}},
                                      {"inputs": PROMPT, "parameters": {"max_length": 2}},
                                      {"inputs": PROMPT, "parameters": {"temperature": 1e-300}}], (200, 422)))
    # 12. browser-reachable server
    async def not_json(k):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            await _requests(base, k, [b'{"inputs": "CCO"}'], (415,), headers={"content-type": content_type})

    run("12 text/plain and form posts", not_json)
    run("12 DNS rebinding (foreign Host) and foreign Origin", lambda k: _foreign(base, k))
    # 13. HEAD /health
    kinds["13 HEAD /health"] = Kind("13 HEAD /health")
    for _ in range(3):
        kinds["13 HEAD /health"].record(httpx.head(f"{base}/health").status_code == 200)


async def _foreign(base: str, kind: Kind) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=HUNG_AFTER) as client:
        for headers, status in (({"Host": "rebind.example"}, 400), ({"Origin": "http://evil.example"}, 403)):
            for _ in range(3):
                response = await client.post("/predict", json={"inputs": PROMPT}, headers=headers)
                kind.record(*_classify(response, (status,)))


def _wait_for_depth(base: str, inputs: int, seconds: float = 20.0) -> None:
    """Until the server holds ``inputs`` inputs (queued or running), as its /metrics says."""
    import re

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        match = re.search(r"^scilm_queue_depth ([0-9.e+]+)$", httpx.get(f"{base}/metrics").text, re.M)
        if match and float(match.group(1)) >= inputs:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the server did not hold {inputs} inputs within {seconds:g} s")


def _sigterm(model_dir: Path, out: Path, kinds: dict[str, Kind]) -> dict:
    """11: a running call and queued requests, then SIGTERM: queued answered 503 at once, exit within the bound."""
    from scilm.serving.bounds import SHUTDOWN_GRACE
    from scilm.serving.local import server_process

    kind = kinds.setdefault("11 SIGTERM with 1 running + 6 queued", Kind("11 SIGTERM"))
    args = ("--max-batch-seconds", str(MAX_BATCH_SECONDS), "--max-wait-ms", "0")
    answers: dict[str, tuple] = {}
    with server_process(model_dir, args=args, log=out / "server-sigterm.log") as (base, process):
        def send(name, parameters):
            try:
                response = httpx.post(f"{base}/predict", json={"inputs": PROMPT, "parameters": parameters},
                                      timeout=HUNG_AFTER)
                answers[name] = (response, time.perf_counter())
            except httpx.HTTPError as exc:
                answers[name] = (exc, time.perf_counter())

        threads = [threading.Thread(target=send, args=("running", {"max_new_tokens": 60, "min_new_tokens": 60,
                                                                   "num_beams": 2}))]
        threads += [threading.Thread(target=send, args=(f"queued{i}", {"max_new_tokens": 50, "num_beams": 3 + i % 4,
                                                                        "min_new_tokens": 50 - i}))
                    for i in range(6)]
        threads[0].start()
        time.sleep(0.5)
        for thread in threads[1:]:
            thread.start()
        _wait_for_depth(base, len(threads))
        signalled = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(HUNG_AFTER + 5)
        code = process.wait(timeout=MAX_BATCH_SECONDS + SHUTDOWN_GRACE + 10)
        exited = time.perf_counter() - signalled
    queued_seconds = []
    for name, (response, at) in answers.items():
        if not isinstance(response, httpx.Response):
            kind.record(False, "hung" if isinstance(response, httpx.TimeoutException) else repr(response))
            continue
        if name == "running":
            kind.record(*_classify(response, (200, 503)))
        else:
            queued_seconds.append(at - signalled)
            kind.record(*_classify(response, (503,)))
    return {"exit_seconds": round(exited, 2), "exit_code": code, "bound_seconds": MAX_BATCH_SECONDS + SHUTDOWN_GRACE,
            "queued_answered_within_s": round(max(queued_seconds), 2) if queued_seconds else None}


def run_abuse_bench(out: Path, model: str | None = None) -> str:
    """Run every kind; write results.json and table.md into ``out``; return the table.

    ``model``: a seq2seq model directory (ScilmError naming ``--model`` otherwise); None: a tiny
    random T5 saved in ``out``.
    """
    import logging

    import psutil

    from scilm.serving.local import server_process

    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model:
        from scilm.errors import ScilmError
        from scilm.serving.models import model_kind

        if model_kind(model) != "seq2seq":
            raise ScilmError(f"--model {model}: --abuse needs a seq2seq model (its kinds use generation parameters)")
    model_dir = Path(model) if model else save_tiny_t5(out / "model-t5-tiny-random")
    busy = psutil.cpu_percent(interval=1.0)
    kinds: dict[str, Kind] = {}
    started = time.perf_counter()
    args = ("--max-batch-seconds", str(MAX_BATCH_SECONDS), "--header-timeout", "10", "--body-timeout", "10")
    with server_process(model_dir, args=args, log=out / "server.log") as (base, _process):
        probe = HealthProbe(base)
        probe.start()
        time.sleep(3)  # the baseline: /health of the idle server, measured the same way
        try:
            _run_kinds(base, kinds, probe)
        finally:
            probe.stop()
    health = probe.summary()
    sigterm = _sigterm(model_dir, out, kinds)
    seconds = time.perf_counter() - started
    totals = Kind("all")
    for kind in kinds.values():
        totals.tried += kind.tried
        totals.clean += kind.clean
        totals.server_errors += kind.server_errors
        totals.hung += kind.hung
    results = {"machine": machine_name(), "cpu_busy_before_percent": busy, "seconds": round(seconds, 1),
               "health": health, "sigterm": sigterm,
               "kinds": {name: {"tried": k.tried, "clean": k.clean, "5xx": k.server_errors, "hung": k.hung,
                                "unclean_examples": k.other[:3]} for name, k in kinds.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = [[name, k.tried, k.clean, k.server_errors, k.hung] for name, k in kinds.items()]
    rows.append(["**all**", totals.tried, totals.clean, totals.server_errors, totals.hung])
    table = "\n".join([
        f"Machine: {results['machine']}; CPU {busy:.0f}% busy before the run (other work on the machine).",
        f"Server: scilm serve, t5-tiny shape (random weights), --max-batch-seconds {MAX_BATCH_SECONDS:g}, "
        f"header/body timeouts 10 s; {seconds:.0f} s in all.",
        "",
        markdown_table(["kind (issue 12 item)", "requests tried", "handled cleanly", "5xx", "hung"], rows),
        "",
        f"/health throughout (a new client and connection every 100 ms): {health['probes']} probes, "
        f"{health['failures']} failed, p50 {health['p50_ms']:.0f} ms, p99 {health['p99_ms']:.0f} ms, max "
        f"{health['max_ms']:.0f} ms (idle server, same probe: p50 {health['idle_p50_ms']:.0f} ms).",
        f"SIGTERM: queued requests answered 503 within {sigterm['queued_answered_within_s']} s; process exited "
        f"after {sigterm['exit_seconds']} s (bound: running call's limit {MAX_BATCH_SECONDS:g} s + 5 s).",
    ])
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    return table
