"""A real OpenAI-compatible chat-completions server for tests, with scripted replies and injected faults.

It speaks HTTP/1.1 over a socket on 127.0.0.1 (port 0), so the client under test goes through its real
connection pool, timeouts and parsing: ``POST /v1/chat/completions`` and ``GET /v1/models`` answer like
vLLM or OpenAI. Replies come from ``reply(request_json) -> str`` (default: derived from the last user
message, deterministic); faults come from ``faults``, either a list consumed by successive chat requests
in arrival order or a function of the request. Fault names:

- ``"429"`` / ``"503"``: that status with ``Retry-After: <retry_after>``; any other 3-digit status string
  (``"500"``, ``"400"``...) answers with that status and a JSON error body;
- ``"timeout"``: waits ``hang_seconds`` (longer than the client's timeout) before answering;
- ``"malformed"``: status 200 with a body that is not JSON;
- ``"truncated"``: status 200, a ``Content-Length`` larger than the body sent, then the connection closes.

Token counts are whitespace words (prompt: every message's content; completion: the reply), so tests can
predict them; a reply longer than ``max_tokens`` words is cut and ends with ``finish_reason="length"``.
Every request is recorded (``requests``), and the highest number handled at once (``max_in_flight``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Fault = str | None
FaultPlan = Iterable[Fault] | Callable[[dict[str, Any]], Fault]


def default_reply(request: dict[str, Any]) -> str:
    """Deterministic text derived from the last user message, so tests can predict contents."""
    last_user = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    return f"Answer to: {last_user}"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (before any fault was applied)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    fault: Fault


class ChatServer:
    """Context manager running the server in a background thread; attributes may be changed between runs."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reply: Callable[[dict[str, Any]], str] = default_reply,
        faults: FaultPlan = (),
        retry_after: str = "0",
        hang_seconds: float = 2.0,
        delay_seconds: float = 0.0,
        include_usage: bool = True,
    ) -> None:
        self.api_key = api_key
        self.reply = reply
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        # Added to every chat request, so that concurrent requests overlap measurably.
        self.delay_seconds = delay_seconds
        self.include_usage = include_usage
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._fault_queue: deque[Fault] = deque()
        self._fault_fn: Callable[[dict[str, Any]], Fault] | None = None
        self.faults = faults
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() quick (shutdown waits for the serving loop's next poll).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="chat-server", daemon=True
        )

    @property
    def faults(self) -> FaultPlan:
        return self._fault_fn or tuple(self._fault_queue)

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        with self._lock:
            if callable(plan):
                self._fault_fn, self._fault_queue = plan, deque()
            else:
                self._fault_fn, self._fault_queue = None, deque(plan)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def reset(self) -> None:
        """Forget recorded requests and the in-flight maximum (faults and replies are kept)."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # Wakes handlers hanging in a "timeout" fault so no thread outlives the test.
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_fault(self, body: dict[str, Any]) -> Fault:
        with self._lock:
            if self._fault_fn is not None:
                return self._fault_fn(body)
            return self._fault_queue.popleft() if self._fault_queue else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        words = self.reply(body).split(" ")
        limit = int(body.get("max_tokens") or len(words))
        finish = "length" if len(words) > limit else "stop"
        content = " ".join(words[:limit])
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        completion_tokens = len(content.split())
        response: dict[str, Any] = {
            "id": f"chatcmpl-test-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            ],
        }
        if self.include_usage:
            response["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        return response


def _make_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps connections open, so the client's pool is exercised as against vLLM.
        protocol_version = "HTTP/1.1"
        # Headers and body are separate writes: without this, delayed ACKs add about 40 ms per response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the default stderr access log."""

        def do_GET(self) -> None:
            server._record(RecordedRequest("GET", self.path, dict(self.headers), None, None))
            if not self._key_ok():
                self._send_unauthorized()
                return
            if self.path.rstrip("/") != "/v1/models":
                self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            model = {"id": "test-model", "object": "model", "created": 0, "owned_by": "thresher-tests"}
            self._send_json(200, {"object": "list", "data": [model]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            is_chat = self.path.rstrip("/") == "/v1/chat/completions"
            valid = is_chat and isinstance(body, dict) and isinstance(body.get("messages"), list)
            authorized = self._key_ok()
            # Only requests that would be answered consume a scripted fault.
            fault = server._next_fault(body) if valid and authorized else None
            server._record(RecordedRequest("POST", self.path, dict(self.headers), body, fault))
            if not is_chat:
                self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            if not authorized:
                self._send_unauthorized()
                return
            if not valid:
                self._send_json(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
                return
            server._enter()
            try:
                self._answer(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (its timeout); nothing more to send.
                self.close_connection = True
            finally:
                server._leave()

        def _answer(self, body: dict[str, Any], fault: Fault) -> None:
            if server.delay_seconds:
                server._stopping.wait(server.delay_seconds)
            if fault == "timeout":
                server._stopping.wait(server.hang_seconds)
                self._send_json(200, server._completion(body))
            elif fault == "malformed":
                self._send_bytes(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            elif fault == "truncated":
                payload = json.dumps(server._completion(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif fault is not None and fault.isdigit() and len(fault) == 3:
                status = int(fault)
                headers = {"Retry-After": server.retry_after} if status in (429, 503) else {}
                error = {"error": {"message": f"injected {status}", "type": "server_error", "code": status}}
                self._send_json(status, error, headers)
            elif fault is None:
                self._send_json(200, server._completion(body))
            else:
                raise ValueError(f"unknown fault {fault!r}")

        def _key_ok(self) -> bool:
            return server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}"

        def _send_unauthorized(self) -> None:
            error = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
            self._send_json(401, error)

        def _send_json(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._send_bytes(status, json.dumps(payload).encode(), headers)

        def _send_bytes(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler
