"""Client for OpenAI-compatible chat-completions endpoints (vLLM, Ollama, llama.cpp server, OpenAI...).

Generation must be reproducible, bounded and cheap to re-run, so the client:

- answers from a content-addressed DuckDB cache first (``ResponseCache``): a re-run costs nothing and
  returns the same data;
- sends the misses over one shared HTTP connection pool with at most ``concurrency`` requests in flight;
- retries 429, 5xx, timeouts, connection errors, malformed and cut-short bodies with exponential backoff
  and full jitter (seeded per request, so the schedule is deterministic), honouring ``Retry-After``;
  other 4xx answers are final;
- enforces a per-run ``Budget`` (requests, tokens) before each send, returning the rest unsent;
- accounts tokens and cost in ``Usage`` (estimated, and counted as such, when a server sends no usage);
- never raises for HTTP faults: each request comes back as a ``ChatResult`` with content or an error.

The API key lives in a ``Secret`` and only ever leaves it as the ``Authorization: Bearer`` header: it is
never logged, never put in errors, results, usage or the cache. No Dagster imports here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import duckdb
import httpx

BUDGET_EXHAUSTED = "budget_exhausted"
# Only these end a complete answer; anything else (content_filter, tool_calls...) is not cached.
CACHEABLE_FINISH_REASONS = frozenset({"stop", "length"})
RESPONSE_FORMATS = (None, "json_object")

# Token estimate when a server omits `usage`: OpenAI's rule of thumb of about 4 characters per token for
# English, plus the chat-template overhead of its cookbook's count (3 per message, 3 priming the reply).
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

# Upper bound of a prompt's tokens for budget reservations: byte-level tokenizers make at most one token
# per UTF-8 byte; chat templates add a few special tokens per message.
TEMPLATE_TOKENS_BOUND_PER_MESSAGE = 8

# Completed responses are written to the cache in batches of this size (and at the end of each call),
# so an interrupted run keeps most of what it generated without a DuckDB write per response.
CACHE_FLUSH_ROWS = 64


class Secret:
    """An API key that does not show itself: repr/str/format give ``Secret('***')``; ``reveal()`` the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a Secret needs a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant-time, so comparing keys leaks nothing through timing.
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Endpoint:
    """Where and what to call; ``name`` (never the key) is what lineage and the UI show."""

    name: str
    base_url: str
    model: str
    api_key: Secret | None = None
    timeout_seconds: float = 60.0
    price_per_million_input: float = 0.0
    price_per_million_output: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):
            # A plain string is wrapped at once so that no repr of the endpoint can show it.
            object.__setattr__(self, "api_key", Secret(self.api_key) if self.api_key else None)
        if not self.name or not self.model:
            raise ValueError("an endpoint needs a name and a model")
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"endpoint {self.name!r}: base_url must be an http(s) URL")
        if url.username or url.password:
            # Credentials in the URL would show wherever the URL does; they belong in api_key.
            raise ValueError(f"endpoint {self.name!r}: put credentials in api_key, not in base_url")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.timeout_seconds > 0:
            raise ValueError(f"endpoint {self.name!r}: timeout_seconds must be positive")
        if self.price_per_million_input < 0 or self.price_per_million_output < 0:
            raise ValueError(f"endpoint {self.name!r}: prices cannot be negative")

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make; every field is part of its cache key."""

    messages: tuple[tuple[str, str], ...]
    temperature: float = 0.7
    max_tokens: int = 1024
    seed: int | None = None
    response_format: str | None = None

    def __post_init__(self) -> None:
        # Normalized so that equal requests (lists vs tuples, 1 vs 1.0) get equal cache keys.
        messages = tuple(tuple(message) for message in self.messages)
        if not messages:
            raise ValueError("a chat request needs at least one message")
        for message in messages:
            if len(message) != 2 or not all(isinstance(part, str) for part in message) or not message[0]:
                raise ValueError("messages must be (role, content) pairs of strings")
        object.__setattr__(self, "messages", messages)
        temperature = float(self.temperature)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")
        object.__setattr__(self, "temperature", temperature)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError("seed must be an integer or None")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}")

    def canonical_json(self, model: str) -> str:
        """The model and all fields as canonical JSON: what the cache key hashes and the cache stores."""
        document = {"model": model, **{f.name: getattr(self, f.name) for f in fields(self)}}
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )

    def cache_key(self, model: str) -> str:
        return hashlib.sha256(self.canonical_json(model).encode()).hexdigest()

    def payload(self, model: str) -> dict[str, Any]:
        """The chat-completions request body."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.response_format is not None:
            body["response_format"] = {"type": self.response_format}
        return body


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request; ``error`` carries no secrets and no content."""

    request: ChatRequest
    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cache_hit: bool
    attempts: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.content is not None


@dataclass(frozen=True)
class Budget:
    """Per-run limits (``None``: unlimited); cache hits are free.

    ``max_requests`` counts requests sent (each may take several attempts). ``max_tokens`` is a hard cap on
    prompt plus completion tokens: a request is sent only if its worst case (``max_tokens`` plus an upper
    bound of its prompt, one token per UTF-8 byte plus template tokens) fits in what is left after the
    tokens used and those reserved by requests in flight. Decisions are made in request order and, when a
    request might not fit, wait for the requests in flight, so the cut-off does not depend on timing. Once
    one request is refused, the budget stays exhausted for the rest of the run.
    """

    max_requests: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"Budget.{name} must be a non-negative integer or None")


_UNLIMITED = Budget()


@dataclass
class Usage:
    """Cumulative per client (per run).

    ``requests``, ``retries`` and the token counts measure work sent to the endpoint; ``cache_hits``,
    ``failures`` and ``not_sent`` count returned results. ``estimated_responses`` counts responses
    without a ``usage`` object, whose tokens were estimated (about 4 characters per token).
    """

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_exhausted: bool = False
    not_sent: int = 0
    estimated_responses: int = 0

    def as_metadata(self) -> dict[str, int | float | bool]:
        """Flat ``llm_*`` values for materialization metadata."""
        metadata: dict[str, int | float | bool] = {
            f"llm_{f.name}": getattr(self, f.name) for f in fields(self)
        }
        metadata["llm_cost_usd"] = round(self.cost_usd, 6)
        metadata["llm_total_tokens"] = self.prompt_tokens + self.completion_tokens
        return metadata


def _is_cacheable(response: Mapping[str, Any]) -> bool:
    """A complete, well-formed response: text content, a final finish reason and integer token counts."""
    return (
        isinstance(response.get("content"), str)
        and response.get("finish_reason") in CACHEABLE_FINISH_REASONS
        and all(_is_count(response.get(name)) for name in ("prompt_tokens", "completion_tokens"))
        and isinstance(response.get("model"), str)
    )


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ResponseCache:
    """Responses by ``ChatRequest.cache_key(model)`` in the table ``llm_responses`` of a DuckDB connection.

    DuckDB has one writer and connections are not shared across threads, so the cache is used only from
    the thread that calls ``LLMClient.complete``; each read and each write is a single SQL statement.
    """

    TABLE = "llm_responses"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        con.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {self.TABLE} (
                key VARCHAR PRIMARY KEY,
                endpoint VARCHAR NOT NULL,
                model VARCHAR NOT NULL,
                request JSON,
                response JSON NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
            )
            """
        )

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """key -> {"content", "finish_reason", "prompt_tokens", "completion_tokens", "model", ...} for hits."""
        if not keys:
            return {}
        rows = self._con.execute(
            f"SELECT key, response FROM {self.TABLE} WHERE key IN (SELECT unnest($1::VARCHAR[]))",
            [list(keys)],
        ).fetchall()
        # A row edited into something malformed counts as a miss, and the next write replaces it.
        return {key: response for key, text in rows if _is_cacheable(response := json.loads(text))}

    def put_many(
        self, rows: list[tuple[str, str, str, dict]], requests: Mapping[str, ChatRequest] | None = None
    ) -> None:
        """Store ``(key, endpoint name, model, response)`` rows; ``requests`` (by key) fills the request column.

        Only complete, well-formed responses are accepted. A stored request is its canonical JSON, which
        holds no key by construction and hashes to the row's key (checked).
        """
        unique: dict[str, tuple[str, str, str, str | None, str]] = {}
        for key, endpoint, model, response in rows:
            if not _is_cacheable(response):
                raise ValueError(f"response for {key[:12]} is not complete and well-formed; not cached")
            request = (requests or {}).get(key)
            if request is not None and request.cache_key(model) != key:
                raise ValueError(f"request given for {key[:12]} does not hash to that key")
            request_json = request.canonical_json(model) if request is not None else None
            response_json = json.dumps(response, sort_keys=True, ensure_ascii=False)
            unique.setdefault(key, (key, endpoint, model, request_json, response_json))
        if not unique:
            return
        columns = [list(column) for column in zip(*unique.values(), strict=True)]
        self._con.execute(
            f"""
            INSERT OR REPLACE INTO {self.TABLE} (key, endpoint, model, request, response)
            SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), unnest($3::VARCHAR[]),
                   unnest($4::VARCHAR[])::JSON, unnest($5::VARCHAR[])::JSON
            """,
            columns,
        )


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool
    retry_after: float | None = None


@dataclass
class _Outcome:
    """What a worker thread hands back; accounting and cache writes happen on the calling thread."""

    response: dict[str, Any] | None
    attempts: int
    error: str | None
    notes: list[str] = field(default_factory=list)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Prompt tokens when a server reports none: the text estimate plus the chat-template overhead."""
    per_message = sum(estimate_text_tokens(content) + TOKENS_PER_MESSAGE for _, content in request.messages)
    return per_message + TOKENS_PER_REPLY


def estimate_text_tokens(text: str) -> int:
    """About 4 characters per token: a documented approximation, flagged in ``Usage.estimated_responses``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _token_bound(request: ChatRequest) -> int:
    """Worst case of a request's tokens, reserved against the budget while it is in flight."""
    prompt = sum(
        len(role.encode()) + len(content.encode()) + TEMPLATE_TOKENS_BOUND_PER_MESSAGE
        for role, content in request.messages
    )
    return prompt + TEMPLATE_TOKENS_BOUND_PER_MESSAGE + request.max_tokens


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _parse_completion(body: object, request: ChatRequest) -> dict[str, Any] | _Failure:
    """The first choice of a chat.completion body, with usage (or an estimate of it)."""
    malformed = _Failure("malformed response", retryable=True)
    if not isinstance(body, dict):
        return malformed
    try:
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content")
        finish_reason = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return malformed
    if finish_reason is not None and not isinstance(finish_reason, str):
        return malformed
    if content is None:
        # The model declined or answered with something else (a filter, tool calls): asking again won't help.
        return _Failure(f"no content (finish_reason {str(finish_reason)[:40]})", retryable=False)
    if not isinstance(content, str):
        return malformed
    reported = _reported_usage(body.get("usage"))
    estimated = reported is None
    prompt_tokens, completion_tokens = reported or (
        estimate_prompt_tokens(request),
        estimate_text_tokens(content),
    )
    model = body.get("model")
    return {
        "content": content,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "model": model if isinstance(model, str) else "",
        "tokens_estimated": estimated,
    }


def _reported_usage(usage: object) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if _is_count(prompt_tokens) and _is_count(completion_tokens):
        return prompt_tokens, completion_tokens
    return None


class LLMClient:
    """Completes batches of chat requests against one endpoint; one ``complete`` call at a time.

    ``log`` (e.g. a Dagster ``context.log.info``) is only called from the thread calling ``complete``.
    Close the client (or use it as a context manager) to release the connection pool.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        cache: ResponseCache | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        budget: Budget = _UNLIMITED,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0 or backoff_seconds < 0 or max_backoff_seconds < 0:
            raise ValueError("max_retries and backoff times cannot be negative")
        self.endpoint = endpoint
        self.cache = cache
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.budget = budget
        self.usage = Usage()
        self._log = log
        headers = {"Accept": "application/json", "User-Agent": "thresher-llm"}
        if endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {endpoint.api_key.reveal()}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(endpoint.timeout_seconds),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
        )

    @property
    def generator(self) -> str:
        return f"llm:{self.endpoint.name}/{self.endpoint.model}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Results in request order: cache hits first, then the misses sent within budget and concurrency.

        Identical requests in one call are sent once and share their result. Never raises for HTTP faults.
        """
        model = self.endpoint.model
        keys = [request.cache_key(model) for request in requests]
        unique: dict[str, ChatRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            unique.setdefault(key, request)
        results: dict[str, ChatResult] = {}
        cached = self.cache.get_many(list(unique)) if self.cache is not None else {}
        for key, response in cached.items():
            results[key] = _result(unique[key], response, cache_hit=True, attempts=0)
        misses = [key for key in unique if key not in cached]
        repeats = f" ({len(requests) - len(unique)} repeated)" if len(unique) < len(requests) else ""
        self._emit(
            f"llm {self.endpoint.name}: {len(requests)} requests{repeats}, {len(cached)} distinct from cache, "
            f"{len(misses)} to send"
        )
        self._send_all(misses, unique, results)
        ordered = [results[key] for key in keys]
        self.usage.cache_hits += sum(result.cache_hit for result in ordered)
        self.usage.not_sent += sum(result.error == BUDGET_EXHAUSTED for result in ordered)
        self.usage.failures += sum(result.error not in (None, BUDGET_EXHAUSTED) for result in ordered)
        return ordered

    def _send_all(
        self, keys: list[str], requests: dict[str, ChatRequest], results: dict[str, ChatResult]
    ) -> None:
        queue = deque(keys)
        in_flight: dict[Future[_Outcome], tuple[str, int]] = {}
        reserved = 0
        to_cache: list[tuple[str, str, str, dict]] = []
        # Set when this call ends (normally or not) so that no worker keeps retrying after it.
        cancelled = threading.Event()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm") as pool:
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < self.concurrency:
                        request = requests[queue[0]]
                        decision = self._admit(request, reserved, bool(in_flight))
                        if decision == "wait":
                            break
                        if decision == "stop":
                            self._exhaust(queue, requests, results)
                            break
                        key = queue.popleft()
                        bound = _token_bound(request)
                        reserved += bound
                        self.usage.requests += 1
                        in_flight[pool.submit(self._send, request, key, cancelled)] = (key, bound)
                    if not in_flight:
                        continue
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        key, bound = in_flight.pop(future)
                        reserved -= bound
                        row = self._settle(requests[key], key, future.result(), results)
                        if row is not None:
                            to_cache.append(row)
                    if len(to_cache) >= CACHE_FLUSH_ROWS:
                        self._flush(to_cache, requests)
            finally:
                cancelled.set()
                # Whatever was generated is kept, even when the run is interrupted.
                self._flush(to_cache, requests)

    def _admit(self, request: ChatRequest, reserved: int, busy: bool) -> str:
        """Whether to send now, wait for requests in flight to settle the token count, or stop (exhausted)."""
        if self.usage.budget_exhausted:
            return "stop"
        budget = self.budget
        if budget.max_requests is not None and self.usage.requests >= budget.max_requests:
            return "stop"
        if budget.max_tokens is not None:
            used = self.usage.prompt_tokens + self.usage.completion_tokens
            if used + reserved + _token_bound(request) > budget.max_tokens:
                return "wait" if busy else "stop"
        return "send"

    def _exhaust(
        self, queue: deque[str], requests: dict[str, ChatRequest], results: dict[str, ChatResult]
    ) -> None:
        self.usage.budget_exhausted = True
        used = self.usage.prompt_tokens + self.usage.completion_tokens
        self._emit(
            f"llm {self.endpoint.name}: budget exhausted (requests {self.usage.requests}/"
            f"{self.budget.max_requests}, tokens {used}/{self.budget.max_tokens}); {len(queue)} requests not sent"
        )
        while queue:
            key = queue.popleft()
            results[key] = ChatResult(requests[key], None, None, 0, 0, False, 0, BUDGET_EXHAUSTED)

    def _settle(
        self, request: ChatRequest, key: str, outcome: _Outcome, results: dict[str, ChatResult]
    ) -> tuple[str, str, str, dict] | None:
        """Account one finished request; return its cache row when the response is cacheable."""
        for note in outcome.notes:
            self._emit(f"llm {self.endpoint.name}: request {key[:12]}: {note}")
        self.usage.retries += outcome.attempts - 1
        response = outcome.response
        if response is None:
            self._emit(f"llm {self.endpoint.name}: request {key[:12]} failed: {outcome.error}")
            results[key] = ChatResult(request, None, None, 0, 0, False, outcome.attempts, outcome.error)
            return None
        prompt_tokens, completion_tokens = response["prompt_tokens"], response["completion_tokens"]
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.usage.estimated_responses += bool(response["tokens_estimated"])
        self.usage.cost_usd += (
            prompt_tokens * self.endpoint.price_per_million_input
            + completion_tokens * self.endpoint.price_per_million_output
        ) / 1_000_000
        results[key] = _result(request, response, cache_hit=False, attempts=outcome.attempts)
        if not _is_cacheable(response):
            return None
        return (key, self.endpoint.name, self.endpoint.model, response)

    def _flush(self, rows: list[tuple[str, str, str, dict]], requests: dict[str, ChatRequest]) -> None:
        if self.cache is not None and rows:
            self.cache.put_many(rows, {row[0]: requests[row[0]] for row in rows})
        rows.clear()

    def _send(self, request: ChatRequest, key: str, cancelled: threading.Event) -> _Outcome:
        """One request with its retries (runs on a worker thread; touches neither usage nor the cache)."""
        # Seeded by the request, so each request's backoff schedule is the same whatever the thread timing.
        rng = random.Random(int(key[:16], 16))
        payload = request.payload(self.endpoint.model)
        notes: list[str] = []
        total = self.max_retries + 1
        attempt = 0
        while True:
            attempt += 1
            answer = self._attempt(payload, request)
            if not isinstance(answer, _Failure):
                return _Outcome(answer, attempt, None, notes)
            if not answer.retryable:
                return _Outcome(None, attempt, answer.reason, notes)
            if attempt == total:
                plural = "s" if attempt > 1 else ""
                return _Outcome(None, attempt, f"{answer.reason} after {attempt} attempt{plural}", notes)
            ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
            delay = rng.uniform(0.0, ceiling)
            if answer.retry_after is not None:
                delay = max(delay, min(answer.retry_after, self.max_backoff_seconds))
            notes.append(f"{answer.reason} on attempt {attempt}/{total}; retried after {delay:.2f} s")
            if cancelled.wait(delay):
                return _Outcome(None, attempt, f"{answer.reason}; cancelled before retrying", notes)

    def _attempt(self, payload: dict[str, Any], request: ChatRequest) -> dict[str, Any] | _Failure:
        # Reasons name the kind of fault only: exception texts can carry URLs or server-echoed data.
        try:
            response = self._http.post(self.endpoint.chat_url, json=payload)
        except httpx.TimeoutException:
            return _Failure("timeout", retryable=True)
        except httpx.RemoteProtocolError:
            return _Failure("incomplete response", retryable=True)
        except httpx.HTTPError as exc:
            return _Failure(f"connection error ({type(exc).__name__})", retryable=True)
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = _retry_after_seconds(response) if status in (429, 503) else None
            return _Failure(f"HTTP {status}", retryable=True, retry_after=retry_after)
        if not 200 <= status < 300:
            return _Failure(f"HTTP {status}", retryable=False)
        try:
            body = response.json()
        except ValueError:
            return _Failure("malformed JSON", retryable=True)
        return _parse_completion(body, request)

    def _emit(self, message: str) -> None:
        if self._log is not None:
            self._log(message)


def _result(
    request: ChatRequest, response: Mapping[str, Any], *, cache_hit: bool, attempts: int
) -> ChatResult:
    return ChatResult(
        request=request,
        content=response["content"],
        finish_reason=response["finish_reason"],
        prompt_tokens=response["prompt_tokens"],
        completion_tokens=response["completion_tokens"],
        cache_hit=cache_hit,
        attempts=attempts,
        error=None,
    )
