"""Real servers on loopback for tests and the load benchmark: in a thread, or as ``scilm serve``."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick; another process could take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url/ready`` every 0.1 s until it answers 200.

    Raises RuntimeError if ``process`` exits first, TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def server_thread(app, port: int | None = None) -> Iterator[str]:
    """``app`` served on 127.0.0.1 in a background thread, as ``scilm serve`` serves it; yields the base URL."""
    from scilm.serving.server import uvicorn_server

    port = port or free_port()
    server = uvicorn_server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=30)
        yield url
    finally:
        server.should_exit = True  # what SIGTERM does: stop accepting, finish in-flight requests
        thread.join(timeout=30)


@contextlib.contextmanager
def server_process(model: str | Path, port: int | None = None, args: tuple[str, ...] = (),
                   log: Path | None = None, env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m scilm serve --model MODEL`` on 127.0.0.1; yields (base URL, process)."""
    port = port or free_port()
    command = [sys.executable, "-m", "scilm", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), *args]
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120, process=process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log:
            out.close()
