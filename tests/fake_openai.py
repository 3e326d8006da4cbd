"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the cloud client's tests.

``POST /v1/chat/completions`` answers from a script: each request takes the next behaviour from a
queue (``ok``, ``slow``, ``hold``, ``status``, ``malformed``, ``trickle``, ``truncated``,
``close``); when the
queue is empty it answers ``ok("fake answer")``. Every request is recorded with its headers, raw
body, parsed JSON and monotonic arrival time, so tests can check what left the client and when.

A test module gets the fixtures by importing them:
``from fake_openai import fake_openai, refused_base_url, ok, status, ...``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Behaviour:
    kind: str  # ok | slow | hold | status | malformed | trickle | truncated | close
    text: str = "fake answer"
    usage: tuple[int, int] | None = (11, 7)
    model: str = "fake-model"
    seconds: float = 0.0
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def ok(text: str = "fake answer", usage: tuple[int, int] | None = (11, 7), model: str = "fake-model") -> Behaviour:
    """A chat completion; ``usage=None`` leaves the usage object out."""
    return Behaviour("ok", text=text, usage=usage, model=model)


def slow(seconds: float, text: str = "slow answer") -> Behaviour:
    """Wait ``seconds`` (or until the server stops) before answering ok."""
    return Behaviour("slow", text=text, seconds=seconds)


def hold(text: str = "held answer") -> Behaviour:
    """Wait until the test calls ``server.release()`` (or the server stops), then answer ok."""
    return Behaviour("hold", text=text)


def status(code: int, retry_after: str | float | None = None, body: Any = None, headers: dict | None = None) -> Behaviour:
    """An HTTP error with an OpenAI-style error body (or ``body``), optionally Retry-After."""
    hdrs = dict(headers or {})
    if retry_after is not None:
        hdrs["Retry-After"] = str(retry_after)
    if body is None:
        body = {"error": {"message": f"fake error {code}", "type": "fake", "code": code}}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Behaviour("status", status=code, headers=hdrs, body=raw)


def malformed(body: bytes = b'{"choices": [ {"message": ') -> Behaviour:
    """200 with a complete body that is not a chat completion (bad JSON by default)."""
    return Behaviour("malformed", body=body)


def trickle(seconds_per_byte: float = 0.05) -> Behaviour:
    """200 whose body comes one byte at a time: no single read ever waits long, the whole does."""
    return Behaviour("trickle", seconds=seconds_per_byte)


def truncated() -> Behaviour:
    """200 announcing a longer body than it sends, then closing the connection."""
    return Behaviour("truncated")


def close() -> Behaviour:
    """Read the request, then close the connection without a byte of answer."""
    return Behaviour("close")


# One poll-with-deadline helper for the whole suite (tests/llm is a package, so its conftest
# no longer shadows this one).
from conftest import wait_for  # noqa: E402,F401


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[Behaviour] = deque()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._release = threading.Event()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)

    # script -----------------------------------------------------------------
    def push(self, *behaviours: Behaviour) -> "FakeOpenAI":
        with self._lock:
            self.script.extend(behaviours)
        return self

    def release(self) -> None:
        self._release.set()

    def next_behaviour(self) -> Behaviour:
        with self._lock:
            return self.script.popleft() if self.script else ok()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    # lifecycle --------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.fake.record(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, raw, time.monotonic()))
        if self.path != "/v1/chat/completions":
            return self._send(404, json.dumps({"error": {"message": "not found"}}).encode())
        b = self.fake.next_behaviour()
        if b.kind == "slow":
            if self.fake._stop.wait(b.seconds):
                return self._drop()
        elif b.kind == "hold":
            self.fake._release.wait(30)
        if b.kind in ("ok", "slow", "hold"):
            try:
                model = json.loads(raw).get("model") if b.model == "fake-model" else b.model
            except ValueError:
                model = b.model
            body: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model or b.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": b.text}, "finish_reason": "stop"}],
            }
            if b.usage is not None:
                body["usage"] = {"prompt_tokens": b.usage[0], "completion_tokens": b.usage[1],
                                 "total_tokens": b.usage[0] + b.usage[1]}
            return self._send(200, json.dumps(body).encode())
        if b.kind == "status":
            return self._send(b.status, b.body or b"", b.headers)
        if b.kind == "malformed":
            return self._send(200, b.body or b"")
        if b.kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"message": {"content": "half')
            self.wfile.flush()
            return self._drop()
        if b.kind == "trickle":
            body = json.dumps({"choices": [{"message": {"content": "trickled " + "." * 200}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                if self.fake._stop.wait(b.seconds):
                    return self._drop()
                try:
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return self._drop()
            return
        if b.kind == "close":
            return self._drop()
        raise AssertionError(f"unknown behaviour {b.kind}")

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def fake_openai():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def refused_base_url():
    """A base URL on a port that refuses connections: bound (so nothing else takes it while the
    test runs) but never listening, so the kernel answers every SYN with a reset."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    sock.close()
