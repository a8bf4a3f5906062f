"""Specification of thresher.llm against a real chat-completions server on 127.0.0.1 (tests/chat_server.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from typing import Any

import duckdb
import pytest

from tests.chat_server import ChatServer
from thresher.llm import (
    BUDGET_EXHAUSTED,
    Budget,
    ChatRequest,
    ChatResult,
    Endpoint,
    LLMClient,
    ResponseCache,
    Secret,
    Usage,
    estimate_prompt_tokens,
    estimate_text_tokens,
)

# Small timeouts and backoffs keep the fault tests fast; the server hangs longer than the client waits.
TIMEOUT = 0.2
FAST: dict[str, Any] = {"backoff_seconds": 0.005, "max_backoff_seconds": 0.05}


def questions(n: int, *, max_tokens: int = 64, prefix: str = "question") -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=(("system", "Be brief."), ("user", f"{prefix} {i}")), max_tokens=max_tokens, seed=7
        )
        for i in range(n)
    ]


def endpoint(server: ChatServer, **overrides: Any) -> Endpoint:
    settings: dict[str, Any] = {
        "name": "test-server",
        "base_url": server.base_url,
        "model": "test-model",
        "timeout_seconds": TIMEOUT,
    }
    return Endpoint(**(settings | overrides))


def client(server: ChatServer, **options: Any) -> LLMClient:
    ep = options.pop("endpoint", None) or endpoint(server)
    return LLMClient(ep, **({"concurrency": 4, **FAST} | options))


def contents(results: list[ChatResult]) -> list[tuple[str | None, str | None, int, int]]:
    return [(r.content, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in results]


def test_happy_path_returns_answers_usage_and_cost(chat_server: ChatServer) -> None:
    chat_server.api_key = "sk-happy"
    ep = endpoint(
        chat_server, api_key=Secret("sk-happy"), price_per_million_input=2.0, price_per_million_output=8.0
    )
    with client(chat_server, endpoint=ep) as llm:
        requests = [*questions(3), ChatRequest((("user", "json please"),), response_format="json_object")]
        results = llm.complete(requests)

    assert [r.content for r in results] == [
        "Answer to: question 0",
        "Answer to: question 1",
        "Answer to: question 2",
        "Answer to: json please",
    ]
    assert all(r.ok and r.finish_reason == "stop" and not r.cache_hit and r.attempts == 1 for r in results)
    assert [r.request for r in results] == requests
    # The server counts words: "Be brief." + "question i" = 4 prompt tokens, the answer 4 tokens.
    assert [(r.prompt_tokens, r.completion_tokens) for r in results[:3]] == [(4, 4)] * 3
    usage = llm.usage
    assert (usage.requests, usage.retries, usage.failures, usage.cache_hits) == (4, 0, 0, 0)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated_responses) == (14, 16, 0)
    assert usage.cost_usd == pytest.approx((14 * 2.0 + 16 * 8.0) / 1e6)
    assert usage.as_metadata() | {"llm_cost_usd": 0} == {
        "llm_requests": 4,
        "llm_cache_hits": 0,
        "llm_retries": 0,
        "llm_failures": 0,
        "llm_prompt_tokens": 14,
        "llm_completion_tokens": 16,
        "llm_total_tokens": 30,
        "llm_cost_usd": 0,
        "llm_budget_exhausted": False,
        "llm_not_sent": 0,
        "llm_estimated_responses": 0,
    }
    assert llm.generator == "llm:test-server/test-model"

    sent = chat_server.chat_requests
    assert len(sent) == 4
    assert all(r.headers["Authorization"] == "Bearer sk-happy" for r in sent)
    bodies = sorted((r.body for r in sent if r.body), key=lambda body: body["messages"][-1]["content"])
    assert bodies[0] == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "json please"}],
        "temperature": 0.7,
        "max_tokens": 1024,
        "response_format": {"type": "json_object"},
    }
    assert bodies[1]["seed"] == 7 and bodies[1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_reply_longer_than_max_tokens_ends_with_length(chat_server: ChatServer) -> None:
    chat_server.reply = lambda request: " ".join(["word"] * 50)
    with client(chat_server) as llm:
        (result,) = llm.complete(questions(1, max_tokens=5))
    assert (result.content, result.finish_reason, result.completion_tokens) == (
        "word word word word word",
        "length",
        5,
    )


@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout", "malformed", "truncated"])
def test_each_fault_slows_but_loses_nothing(chat_server: ChatServer, fault: str) -> None:
    with client(chat_server) as llm:
        expected = contents(llm.complete(questions(6)))
    chat_server.reset()
    chat_server.faults = [fault, fault, fault]
    with client(chat_server) as llm:
        results = llm.complete(questions(6))

    assert contents(results) == expected
    assert all(r.ok and r.error is None for r in results)
    assert sum(r.attempts for r in results) == 9
    assert (llm.usage.requests, llm.usage.retries, llm.usage.failures) == (6, 3, 0)
    assert len(chat_server.chat_requests) == 9


def test_mixed_faults_under_concurrency_lose_nothing(chat_server: ChatServer) -> None:
    chat_server.faults = ["429", "500", "timeout", "malformed", "truncated"] * 2
    logs: list[str] = []
    with client(chat_server, concurrency=4, log=logs.append) as llm:
        results = llm.complete(questions(12))
    assert [r.content for r in results] == [f"Answer to: question {i}" for i in range(12)]
    assert llm.usage.retries == 10 and llm.usage.failures == 0
    assert sum("retried after" in line for line in logs) == 10


def test_retry_after_is_honoured_and_capped(chat_server: ChatServer) -> None:
    chat_server.faults = ["429"]
    chat_server.retry_after = "0.3"
    with client(chat_server, concurrency=1, max_backoff_seconds=5) as llm:
        start = time.monotonic()
        (result,) = llm.complete(questions(1))
    assert result.ok and result.attempts == 2
    assert time.monotonic() - start >= 0.3

    chat_server.faults = ["503"]
    chat_server.retry_after = "3600"
    with client(chat_server, concurrency=1, max_backoff_seconds=0.1) as llm:
        start = time.monotonic()
        (result,) = llm.complete(questions(1, prefix="capped"))
    assert result.ok and result.attempts == 2
    assert time.monotonic() - start < 2


def test_backoff_schedule_is_deterministic(chat_server: ChatServer) -> None:
    runs = []
    for _ in range(2):
        chat_server.faults = ["500", "500", "500"]
        logs: list[str] = []
        with client(chat_server, concurrency=1, backoff_seconds=0.01, log=logs.append) as llm:
            llm.complete(questions(1))
        runs.append([line for line in logs if "retried after" in line])
    assert len(runs[0]) == 3
    assert runs[0] == runs[1]


def test_permanent_500_fails_with_its_reason_after_max_retries(chat_server: ChatServer, tmp_path) -> None:
    chat_server.faults = lambda request: "500" if request["messages"][-1]["content"] == "question 2" else None
    con = duckdb.connect(str(tmp_path / "cache.duckdb"))
    with client(chat_server, cache=ResponseCache(con), max_retries=2) as llm:
        results = llm.complete(questions(4))

    failed = results[2]
    assert (failed.ok, failed.content, failed.attempts) == (False, None, 3)
    assert failed.error == "HTTP 500 after 3 attempts"
    assert [r.ok for r in results] == [True, True, False, True]
    assert (llm.usage.requests, llm.usage.failures, llm.usage.retries) == (4, 1, 2)
    # Failures are not cached: the next run asks for that one again, and only that one.
    chat_server.reset()
    chat_server.faults = ()
    with client(chat_server, cache=ResponseCache(con)) as llm:
        again = llm.complete(questions(4))
    assert [r.cache_hit for r in again] == [True, True, False, True]
    assert again[2].content == "Answer to: question 2"
    assert len(chat_server.chat_requests) == 1


def test_wrong_key_gets_a_final_401(chat_server: ChatServer) -> None:
    chat_server.api_key = "sk-right"
    with client(chat_server, endpoint=endpoint(chat_server, api_key=Secret("sk-wrong"))) as llm:
        results = llm.complete(questions(3))
    assert [(r.ok, r.error, r.attempts) for r in results] == [(False, "HTTP 401", 1)] * 3
    assert len(chat_server.chat_requests) == 3
    assert (llm.usage.failures, llm.usage.retries) == (3, 0)


def test_other_4xx_are_final(chat_server: ChatServer) -> None:
    chat_server.faults = ["400"]
    with client(chat_server, concurrency=1) as llm:
        results = llm.complete(questions(2))
    assert [(r.error, r.attempts) for r in results] == [("HTTP 400", 1), (None, 1)]


def test_unreachable_endpoint_fails_cleanly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more: every attempt is refused.
    ep = Endpoint("nowhere", f"http://127.0.0.1:{port}/v1", "m", timeout_seconds=TIMEOUT)
    with LLMClient(ep, max_retries=1, **FAST) as llm:
        (result,) = llm.complete(questions(1))
    assert result.error == "connection error (ConnectError) after 2 attempts"


def test_interrupted_run_keeps_what_it_made_and_stops_retrying(chat_server: ChatServer, tmp_path) -> None:
    class Interrupted(Exception):
        pass

    def interrupt_on_failure(line: str) -> None:
        if "failed" in line:
            raise Interrupted

    plan = {"question 1": "429", "question 2": "400"}
    chat_server.faults = lambda request: plan.get(request["messages"][-1]["content"])
    chat_server.retry_after = "30"
    con = duckdb.connect(str(tmp_path / "cache.duckdb"))
    llm = client(
        chat_server, cache=ResponseCache(con), concurrency=2, max_backoff_seconds=60, log=interrupt_on_failure
    )
    start = time.monotonic()
    with llm, pytest.raises(Interrupted):
        # q0 succeeds, q1 waits 30 s to retry, q2 fails and the (interrupting) log raises.
        llm.complete(questions(4))
    assert time.monotonic() - start < 5
    assert set(ResponseCache(con).get_many([r.cache_key("test-model") for r in questions(4)])) == {
        questions(1)[0].cache_key("test-model")
    }
    assert [r.fault for r in chat_server.chat_requests].count("429") == 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_never_more_than_concurrency_requests_in_flight(chat_server: ChatServer, concurrency: int) -> None:
    chat_server.delay_seconds = 0.05
    with client(chat_server, concurrency=concurrency) as llm:
        results = llm.complete(questions(9))
    assert all(r.ok for r in results)
    assert chat_server.max_in_flight == concurrency


def test_results_follow_request_order_and_repeats_are_sent_once(chat_server: ChatServer) -> None:
    def slow_for_early(request: dict[str, Any]) -> str:
        # Earlier questions answer later, so completions arrive out of order.
        index = int(request["messages"][-1]["content"].split()[-1])
        time.sleep(0.02 * (6 - index))
        return f"reply {index}"

    chat_server.reply = slow_for_early
    requests = questions(6)
    with client(chat_server, concurrency=6) as llm:
        results = llm.complete([*requests, requests[0], requests[3]])
    assert [r.content for r in results] == [f"reply {i}" for i in [0, 1, 2, 3, 4, 5, 0, 3]]
    assert len(chat_server.chat_requests) == 6
    assert llm.usage.requests == 6


def test_budget_by_requests_stops_cleanly_and_keeps_what_was_made(chat_server: ChatServer, tmp_path) -> None:
    con = duckdb.connect(str(tmp_path / "cache.duckdb"))
    logs: list[str] = []
    with client(chat_server, cache=ResponseCache(con), budget=Budget(max_requests=3), log=logs.append) as llm:
        results = llm.complete(questions(7))
        later = llm.complete(questions(2, prefix="later"))

    assert [r.ok for r in results] == [True] * 3 + [False] * 4
    assert all((r.error, r.attempts, r.content) == (BUDGET_EXHAUSTED, 0, None) for r in results[3:] + later)
    usage = llm.usage
    assert (usage.requests, usage.not_sent, usage.failures, usage.budget_exhausted) == (3, 6, 0, True)
    assert len(chat_server.chat_requests) == 3
    assert any("budget exhausted" in line for line in logs)

    # A new run with a new budget sends only what is missing; cache hits cost no budget.
    chat_server.reset()
    with client(chat_server, cache=ResponseCache(con), budget=Budget(max_requests=4)) as llm:
        second = llm.complete(questions(7))
    assert [r.cache_hit for r in second] == [True] * 3 + [False] * 4
    assert all(r.ok for r in second)
    assert len(chat_server.chat_requests) == 4


def test_budget_by_tokens_is_a_cap_and_cuts_at_the_same_place_whatever_the_concurrency(
    chat_server: ChatServer,
) -> None:
    outcomes = []
    for concurrency in (1, 4):
        chat_server.reset()
        with client(chat_server, concurrency=concurrency, budget=Budget(max_tokens=100)) as llm:
            results = llm.complete(questions(12, max_tokens=16))
        sent = sum(r.ok for r in results)
        # Each request reserves its worst case, 69 tokens (45 prompt bytes + template bound 3 x 8 + 16),
        # and uses 8: the fifth would need 32 + 69 > 100.
        assert sent == 4
        assert [r.ok for r in results] == [True] * sent + [False] * (12 - sent)
        assert all(r.error == BUDGET_EXHAUSTED for r in results[sent:])
        assert llm.usage.prompt_tokens + llm.usage.completion_tokens <= 100
        assert llm.usage.budget_exhausted and llm.usage.not_sent == 12 - sent
        assert len(chat_server.chat_requests) == sent
        outcomes.append(contents(results))
    assert outcomes[0] == outcomes[1]


def test_zero_budget_sends_nothing(chat_server: ChatServer) -> None:
    with client(chat_server, budget=Budget(max_requests=0)) as llm:
        results = llm.complete(questions(2))
    assert [r.error for r in results] == [BUDGET_EXHAUSTED] * 2
    assert chat_server.chat_requests == []


def test_second_run_is_served_entirely_from_the_cache(chat_server: ChatServer, tmp_path) -> None:
    path = str(tmp_path / "run.duckdb")
    chat_server.faults = ["429", "timeout", "truncated"]
    requests = [*questions(10), ChatRequest((("user", "long " * 40),), max_tokens=8)]
    with duckdb.connect(path) as con, client(chat_server, cache=ResponseCache(con)) as llm:
        first = llm.complete(requests)
    assert all(r.ok and not r.cache_hit for r in first)
    assert first[-1].finish_reason == "length"

    chat_server.reset()
    with (
        duckdb.connect(path) as con,
        client(chat_server, cache=ResponseCache(con), budget=Budget(0, 0)) as llm,
    ):
        second = llm.complete(requests)
        third = llm.complete(requests)
    assert chat_server.requests == []
    assert contents(second) == contents(first) == contents(third)
    assert all(r.cache_hit and r.attempts == 0 and r.error is None for r in second)
    usage = llm.usage
    assert (usage.requests, usage.cache_hits, usage.prompt_tokens, usage.completion_tokens) == (0, 22, 0, 0)
    assert usage.cost_usd == 0 and not usage.budget_exhausted


def test_cache_table_holds_canonical_requests_and_survives_reconnect(
    chat_server: ChatServer, tmp_path
) -> None:
    path = str(tmp_path / "cache.duckdb")
    requests = questions(3)
    with duckdb.connect(path) as con, client(chat_server, cache=ResponseCache(con)) as llm:
        llm.complete(requests)

    with duckdb.connect(path) as con:
        columns = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'llm_responses' ORDER BY ordinal_position"
        ).fetchall()
        rows = con.execute("SELECT key, endpoint, model, request, response FROM llm_responses").fetchall()
        constraints = con.execute(
            "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'llm_responses'"
        ).fetchall()
    assert [name for name, _ in columns] == ["key", "endpoint", "model", "request", "response", "created_at"]
    assert ("PRIMARY KEY",) in constraints
    assert len(rows) == 3
    by_key = {r.cache_key("test-model"): r for r in requests}
    for key, endpoint_name, model, request_json, response_json in rows:
        assert (endpoint_name, model) == ("test-server", "test-model")
        assert hashlib.sha256(request_json.encode()).hexdigest() == key
        assert json.loads(request_json)["messages"] == [list(m) for m in by_key[key].messages]
        response = json.loads(response_json)
        assert response["content"].startswith("Answer to: question")
        assert response["finish_reason"] == "stop"

    # A fresh cache object on a fresh connection answers in one statement.
    with duckdb.connect(path) as con:
        hits = ResponseCache(con).get_many([*by_key, "0" * 64])
    assert set(hits) == set(by_key)


def test_cache_accepts_only_complete_well_formed_responses() -> None:
    cache = ResponseCache(duckdb.connect())
    good = {"content": "x", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1, "model": "m"}
    for broken in (
        good | {"finish_reason": "content_filter"},
        good | {"content": None},
        good | {"prompt_tokens": -1},
        {"content": "x"},
    ):
        with pytest.raises(ValueError, match="not complete and well-formed"):
            cache.put_many([("k", "e", "m", broken)])
    with pytest.raises(ValueError, match="does not hash"):
        cache.put_many([("k", "e", "m", good)], {"k": questions(1)[0]})
    cache.put_many([("k", "e", "m", good), ("k", "e", "m", good | {"content": "y"}), ("j", "e", "m", good)])
    assert cache.get_many(["k", "j"]) == {"k": good, "j": good}
    assert cache.get_many([]) == {}


def test_missing_usage_is_estimated_and_reported(chat_server: ChatServer) -> None:
    chat_server.include_usage = False
    requests = questions(2)
    with client(chat_server) as llm:
        results = llm.complete(requests)
    expected_prompt = estimate_prompt_tokens(requests[0])
    # "Be brief." (3) + "question 0" (3) + 3 template tokens each + 3 priming the reply.
    assert expected_prompt == 3 + 3 + 3 + 3 + 3
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [
        (expected_prompt, estimate_text_tokens("Answer to: question 0"))
    ] * 2
    assert llm.usage.estimated_responses == 2
    assert llm.usage.as_metadata()["llm_estimated_responses"] == 2


def test_cache_key_is_canonical_over_model_and_every_field() -> None:
    base = ChatRequest(messages=(("user", "hi"),), temperature=1, max_tokens=10, seed=3)
    same = ChatRequest(messages=[["user", "hi"]], temperature=1.0, max_tokens=10, seed=3)  # type: ignore[arg-type]
    assert base == same and base.cache_key("m") == same.cache_key("m")
    assert base.canonical_json("m") == (
        '{"max_tokens":10,"messages":[["user","hi"]],"model":"m","response_format":null,"seed":3,"temperature":1.0}'
    )
    variants = [
        ChatRequest(messages=(("user", "hi!"),), temperature=1, max_tokens=10, seed=3),
        ChatRequest(messages=(("system", "hi"),), temperature=1, max_tokens=10, seed=3),
        ChatRequest(messages=(("user", "hi"),), temperature=0.5, max_tokens=10, seed=3),
        ChatRequest(messages=(("user", "hi"),), temperature=1, max_tokens=11, seed=3),
        ChatRequest(messages=(("user", "hi"),), temperature=1, max_tokens=10, seed=None),
        ChatRequest(
            messages=(("user", "hi"),), temperature=1, max_tokens=10, seed=3, response_format="json_object"
        ),
    ]
    keys = {base.cache_key("m"), base.cache_key("other-model"), *(v.cache_key("m") for v in variants)}
    assert len(keys) == 2 + len(variants)


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": ()},
        {"messages": (("user",),)},
        {"messages": (("user", 3),)},
        {"temperature": float("nan")},
        {"max_tokens": 0},
        {"seed": 1.5},
        {"response_format": "yaml"},
    ],
)
def test_invalid_requests_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ChatRequest(**({"messages": (("user", "hi"),)} | bad))


def test_key_never_leaks(chat_server: ChatServer, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-CANARY-5f1e9d0c7b"
    wrong = "sk-WRONG-CANARY-81aa"
    caplog.set_level(logging.DEBUG)
    chat_server.api_key = key
    chat_server.faults = lambda request: {
        "q 1": "429",
        "q 2": "500",
        "q 3": "timeout",
        "q 4": "malformed",
        "q 5": "truncated",
        "q 6": "400",
    }.get(request["messages"][-1]["content"])
    con = duckdb.connect(str(tmp_path / "cache.duckdb"))
    logs: list[str] = []
    texts: list[str] = []
    errors: set[str | None] = set()
    requests = [ChatRequest((("user", f"q {i}"),), max_tokens=8) for i in range(8)]
    budget = Budget(max_requests=7)
    for secret in (key, wrong):
        ep = endpoint(chat_server, api_key=Secret(secret))
        texts += [repr(ep), str(ep), f"{ep.api_key}", repr(ep.api_key)]
        with client(
            chat_server, endpoint=ep, cache=ResponseCache(con), budget=budget, max_retries=1, log=logs.append
        ) as llm:
            results = llm.complete(requests)
            texts += [repr(r) for r in results] + [repr(llm.usage), repr(llm.usage.as_metadata())]
            errors |= {r.error for r in results}
    # The faults really were exercised, and the key really was sent.
    assert errors >= {None, "HTTP 401", "HTTP 400", "HTTP 500 after 2 attempts", BUDGET_EXHAUSTED}
    texts += [error for error in errors if error]
    assert any(r.headers.get("Authorization") == f"Bearer {key}" for r in chat_server.requests)

    for bad_url in (f"http://user:{key}@127.0.0.1:1/v1", "ftp://127.0.0.1/v1"):
        with pytest.raises(ValueError) as excinfo:
            Endpoint("bad", bad_url, "m", api_key=Secret(key))
        texts += [str(excinfo.value), repr(excinfo.value)]
    texts += logs
    texts += [record.getMessage() for record in caplog.records] + [caplog.text]
    texts += [str(row) for row in con.execute("SELECT * FROM llm_responses").fetchall()]
    assert logs and caplog.records
    for text in texts:
        assert key not in text and wrong not in text and "CANARY" not in text


def test_secret_and_plain_string_keys_are_masked() -> None:
    ep = Endpoint("e", "http://127.0.0.1:1/v1/", "m", api_key="sk-plain-text")  # type: ignore[arg-type]
    assert isinstance(ep.api_key, Secret) and ep.api_key.reveal() == "sk-plain-text"
    assert "sk-plain-text" not in repr(ep)
    assert ep.base_url == "http://127.0.0.1:1/v1" and ep.chat_url == "http://127.0.0.1:1/v1/chat/completions"
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Usage().as_metadata()["llm_requests"] == 0
