"""Servers for the tests: the app over the fake engine in a thread of the test process, or `llmlab serve` as a
subprocess; both on 127.0.0.1 at a free port. Also raw HTTP requests that report the status of an error."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cli.test_generate_cli import CHATML, save_tiny_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

START_SECONDS = 120
SERVE_COMMAND = [sys.executable, "-m", "llmlab", "serve"]
API_KEY = "test-key"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_checkpoint(directory: Path, chat_template: bool = True) -> Path:
    """A tiny random LLaMA with a byte-level BPE tokenizer (and a ChatML template), saved with llmlab.save."""
    save_tiny_model(directory)
    if chat_template:
        (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML,
                                                                     "eos_token": "<|im_end|>"}))
    return directory


def wait_until_healthy(base: str, alive=lambda: True, seconds: float = START_SECONDS) -> None:
    """Poll /health until it answers 200; fail when alive() turns false or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert alive(), "the server exited before it was ready"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {base} did not become healthy within {seconds} s")


@contextlib.contextmanager
def app_server(app):
    """Run an ASGI app with uvicorn in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, thread.is_alive, 30)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def cli_server(checkpoint: Path, *options: str, env: dict | None = None):
    """Run `llmlab serve CHECKPOINT` as a subprocess, its output to a file (a pipe nobody reads would fill up and
    stall it); yields (base URL, the process)."""
    port = free_port()
    command = [*SERVE_COMMAND, str(checkpoint), "--port", str(port), *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_healthy(base, lambda: process.poll() is None)
            except AssertionError as error:
                log.seek(0)
                raise AssertionError(f"{error}; its output:\n{log.read()[-4000:]}") from None
            try:
                yield base, process
            except BaseException:  # the server's own account of a failure, beside the client's
                log.seek(0)
                print(f"llmlab serve's output:\n{log.read()[-8000:]}", file=sys.stderr)
                raise
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def post(base: str, path: str, body: bytes | dict | str, key: str | None = API_KEY,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST body (a dict as JSON); (status, the JSON answer, the response headers), also for an error status."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(f"{base}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), error.headers


def get(base: str, path: str, key: str | None = API_KEY) -> tuple[int, bytes, dict]:
    """GET path: (status, the body, the response headers), also for an error status."""
    request = urllib.request.Request(f"{base}{path}")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers
