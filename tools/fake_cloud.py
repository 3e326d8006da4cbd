"""A small OpenAI-compatible chat-completions server for tools (tools/soak.py): answers, or fails.

A trimmed copy of tests/fake_openai.py (tools do not import from tests): ``POST
/v1/chat/completions`` answers a chat completion, except that a share ``fail_ratio`` of the
requests (and every request while ``outage`` is set) fail in turn as an HTTP 500, a connection
closed without an answer, or an answer slower than ``slow_s``.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeCloud:
    def __init__(self, fail_ratio: float = 0.0, slow_s: float = 3.0, seed: int = 0) -> None:
        self.fail_ratio = fail_ratio
        self.slow_s = slow_s
        self.outage = False
        self.count = 0
        self.failed = 0
        self._rnd = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-cloud", daemon=True)

    def behaviour(self) -> str:
        with self._lock:
            self.count += 1
            if self.outage or self._rnd.random() < self.fail_ratio:
                self.failed += 1
                return ("status", "close", "slow")[self.failed % 3]
            return "ok"

    def start(self) -> "FakeCloud":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCloud
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        kind = self.fake.behaviour()
        if kind == "close":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if kind == "slow" and self.fake._stop.wait(self.fake.slow_s):
            return
        if kind == "status":
            return self._send(500, json.dumps({"error": {"message": "fake outage", "type": "fake"}}).encode())
        body = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "A fake cloud answer."},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
        self._send(200, json.dumps(body).encode())

    def _send(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
