"""The web page in a real headless Chromium (Debian's; `.ci/install-browser.sh` installs it).

Driven over the Chrome DevTools Protocol through ``--remote-debugging-pipe`` (null-terminated
JSON on file descriptors 3 and 4), so the test needs no Python browser package and downloads
nothing. The test types a sequence into the page, clicks Predict with a real mouse event and
reads the predicted label the page shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest

from scilm.bench.serve import save_random_classifier
from scilm.serving.local import server_thread
from scilm.serving.models import load_served_model
from scilm.serving.server import create_app

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run .ci/install-browser.sh)"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed to hand chromium its CDP pipe"),
]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class Chromium:
    """A headless Chromium and one page, spoken to with CDP over a pipe."""

    def __init__(self, profile):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        # CDP reads commands on fd 3 and writes replies on fd 4: bash puts the pipe ends there
        redirect = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", redirect, CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._id, self.session = b"", 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:  # skip events until our reply
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page JS failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # e.g. the page is still loading and the element not there yet
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression!r}; body: {self.js('document.body.innerText')!r}")

    def type_into(self, element_id: str, text: str) -> None:
        self.js(f"document.getElementById({element_id!r}).value = ''; document.getElementById({element_id!r}).focus()")
        self.send("Input.insertText", text=text)

    def click(self, element_id: str) -> None:
        x, y = self.js(f"(() => {{ const r = document.getElementById({element_id!r}).getBoundingClientRect(); "
                       "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def served_url(tmp_path_factory):
    model_dir = save_random_classifier(tmp_path_factory.mktemp("page") / "classifier", preset="esm2-tiny")
    with server_thread(create_app(load_served_model(model_dir), max_wait_ms=2)) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    chromium = Chromium(tmp_path / "profile")
    yield chromium
    chromium.close()


def test_page_predicts_a_pasted_sequence(served_url, browser):
    sequence = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"
    expected = httpx.post(f"{served_url}/predict", json={"inputs": sequence}).json()[0]

    browser.send("Page.navigate", url=f"{served_url}/")
    browser.wait_for("document.getElementById('model').textContent.includes('classifier model')")
    browser.type_into("inputs", f">my protein\n{sequence}\n")
    browser.click("submit")
    label = browser.wait_for("document.querySelector('.top-label') && document.querySelector('.top-label').dataset.label")
    assert label == expected[0]["label"]
    shown = browser.js("[...document.querySelectorAll('.result .score')].map(e => e.textContent)")
    assert shown == [f"{item['score']:.3f}" for item in expected]  # every class, as a bar with its score
    assert browser.js("document.querySelector('.result h3').textContent") == "my protein"

    browser.type_into("inputs", "MKTJAY")
    browser.click("submit")
    error = browser.wait_for("document.getElementById('error').style.display === 'block' && "
                             "document.getElementById('error').textContent")
    assert "422" in error and "invalid residue 'J'" in error and "position 4" in error


def test_page_draws_generated_smiles(browser, monkeypatch):
    """A seq2seq server whose model always answers ethanol: the page must draw it (RDKit SVG)."""
    from pathlib import Path

    from scilm.inference import generate as generate_module
    from scilm.models.protein import esm2_tokenizer  # any tokenizer will do to count source tokens
    from scilm.serving.models import ServedSeq2Seq

    def generate(model, tokenizer, sources, smiles, batch_size, num_return_sequences, **generation):
        return [["OCC"] * num_return_sequences for _ in sources]

    monkeypatch.setattr(generate_module, "generate_sequences", generate)
    served = ServedSeq2Seq(None, esm2_tokenizer(), Path("."))
    with server_thread(create_app(served, max_wait_ms=2)) as url:
        browser.send("Page.navigate", url=f"{url}/")
        browser.wait_for("document.getElementById('model').textContent.includes('seq2seq model')")
        browser.js("document.getElementById('task').value = 'text-to-smiles'")
        browser.type_into("inputs", "The molecule is ethanol.")
        browser.click("submit")
        alt = browser.wait_for("document.querySelector('.molecule img') && document.querySelector('.molecule img').alt")
        assert alt == "CCO"  # the canonical SMILES of the drawn molecule
        assert browser.js("document.querySelector('code.generated').textContent") == "OCC"
        assert browser.js("document.querySelector('.molecule img').naturalWidth") > 0  # the SVG rendered
