"""Throughput of the cleaned stage (first cut): formatting, PII and quality heuristics, then language ID.

Generates N chat records (default 100,000) with planted junk: HTML, control characters, runs of
spaces, emails, phones, card numbers (Luhn-valid and not), IPs, API keys, refusals, truncated and
repetitive answers, fenced code. Runs ``Cleaner`` twice: once without language ID (the target is
>= 50,000 records/s for that), once with it. Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/clean.py [--records N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.cleaning import Cleaner, language_model
from thresher.config import CleanConfig, QualityConfig
from thresher.records import conform

TARGET_RECORDS_PER_SECOND = 50_000

PROMPTS = [
    "Explain how a hash map handles collisions and when it resizes its bucket array.",
    "Write a short note to my landlord about the broken heater, you can reach me at {email}.",
    "<p>What is the capital of <b>France</b>?</p><div>Answer briefly &amp; clearly.</div>",
    "Summarise the following paragraph in two sentences:   The committee met on   Tuesday.\x07",
    "My server {ip} keeps dropping connections; version 1.2.3.4 of the agent is installed.",
    "Call me on {phone} tomorrow about the invoice for card {card}.",
    "Why does this fail?\n```python\nif a < b and c > d:\n    print('ok')\n```",
    "Translate 'good morning' into German and explain the greeting's usage.",
]
FILLER = [
    "Hash tables trade memory for speed, which is usually the right call for lookups.",
    "The committee reviewed the proposal in detail before voting on the final budget.",
    "Good documentation explains why a decision was made, not only what was done.",
    "Most grammar rules have exceptions that learners pick up through reading.",
    "A careful reviewer checks the edge cases first, because that is where bugs hide.",
    "Weather in the mountains changes quickly, so hikers should pack an extra layer.",
    "Compound interest grows slowly at first and then surprisingly fast.",
    "The recipe needs two cups of flour, a pinch of salt and some patience.",
    "Testing on real data catches problems that synthetic examples never show.",
    "Many cities now publish their transit schedules as open data for developers.",
    "When in doubt, measure twice and cut once, as every carpenter will tell you.",
    "The library closes early on Sundays, but the reading room stays open until six.",
]
RESPONSES = [
    "A hash map stores keys in buckets chosen by their hash. Collisions go into a chain or the next"
    " free slot, and the table doubles its buckets when the load factor passes a threshold.",
    "Dear landlord,\n\n\n\n\nThe heater has been broken since Monday. Please contact me at {email}.\n\nThanks.",
    "The capital of France is <strong>Paris</strong>.",
    "The committee met on Tuesday.  It approved the budget.",
    "Check the firewall on {ip} first, then rotate the key {key} you pasted.",
    "I'm sorry, but I can't help with that request.",
    "Use parentheses:\n```python\nif (a < b) and (c > d):\n    print('ok')\n```",
    "Guten Morgen is used until about noon. After that people say Guten Tag, and in the",
    "Yes.\nYes.\nYes.\nYes.\nYes.",
    "The number {card2} is not a valid card, and 4111-1111-1111-1111 is a test card.",
]


def _luhn_complete(prefix: np.ndarray) -> np.ndarray:
    """Append the Luhn check digit to each row of 15 digits."""
    digits = prefix[:, ::-1].astype(np.int64)
    doubled = digits.copy()
    doubled[:, 0::2] *= 2
    doubled[doubled > 9] -= 9
    check = (10 - doubled.sum(axis=1) % 10) % 10
    return np.concatenate([prefix, check[:, None]], axis=1)


def generate(n: int, seed: int) -> pl.DataFrame:
    """``n`` canonical records with planted PII and junk, built column-wise (fast, deterministic)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    cards = _luhn_complete(np.concatenate([np.full((n, 1), 4), rng.integers(0, 10, (n, 14))], axis=1))
    card = pl.Series(
        [" ".join(["".join(map(str, r[i : i + 4])) for i in range(0, 16, 4)]) for r in cards[:200]]
    )
    values = pl.DataFrame(
        {
            "email": pl.Series([f"user{i}@example{i % 97}.com" for i in idx]),
            "phone": pl.Series([f"+1 (415) 555-{i % 10000:04d}" for i in idx]),
            "ip": pl.Series([f"10.{i % 256}.{(i // 256) % 256}.{i % 200 + 1}" for i in idx]),
            "key": pl.Series([f"sk-proj-{i:08d}abcdefghijklmnopqrstuv" for i in idx]),
            "card": card.gather(idx % card.len()),
            "card2": pl.Series([f"4000 1234 5678 {i % 10000:04d}" for i in idx]),
        }
    )
    prompts = pl.Series(PROMPTS).gather(rng.integers(0, len(PROMPTS), n))
    responses = pl.Series(RESPONSES).gather(rng.integers(0, len(RESPONSES), n))
    filler = pl.Series(FILLER)
    n_filler = len(FILLER)
    prose = [
        " ".join(FILLER[(i * 7 + j) % n_filler] for j in range(k))
        for i, k in enumerate(rng.integers(4, 12, n))
    ]
    # Filler goes after the prompt and before the response, so refusals stay at the response start
    # and truncated or repetitive endings stay at its end; refusal templates get none.
    is_refusal = responses.str.starts_with("I'm sorry")
    frame = values.with_columns(
        prompt=prompts + " " + filler.gather(idx % n_filler),
        response=pl.when(pl.lit(is_refusal)).then(responses).otherwise(pl.Series(prose) + "\n\n" + responses),
    )
    for name in ("email", "phone", "ip", "key", "card", "card2"):
        frame = frame.with_columns(
            pl.col("prompt").str.replace_all("{" + name + "}", pl.col(name), literal=True),
            pl.col("response").str.replace_all("{" + name + "}", pl.col(name), literal=True),
        )
    records = frame.select(
        pl.format("bench0000000:{}", pl.int_range(pl.len())).alias("record_id"),
        pl.lit("bench").alias("batch"),
        pl.lit("chat").alias("task"),
        pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), pl.col("response").alias("content")),
        ).alias("messages"),
        pl.lit("bench.jsonl").alias("source_file"),
        (pl.int_range(pl.len()) + 1).alias("source_line"),
    )
    return conform(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    records = generate(args.records, args.seed)
    chars = int(
        records.select(
            pl.col("messages")
            .list.eval(pl.element().struct.field("content").str.len_chars())
            .list.sum()
            .sum()
        ).item()
    )
    language_model()  # load once, outside the timings

    heuristics = Cleaner(CleanConfig(quality=QualityConfig(language=None)))
    clock = time.perf_counter()
    result = heuristics.run(records)
    total = time.perf_counter() - clock
    result.check_conservation()

    with_language = Cleaner(CleanConfig())
    clock = time.perf_counter()
    full = with_language.run(records)
    total_with_language = time.perf_counter() - clock
    full.check_conservation()

    n = records.height
    steps = {name: seconds for name, seconds in heuristics.timings.items() if name != "quality.language"}
    rows = [(name, seconds, n / seconds if seconds else float("inf")) for name, seconds in steps.items()]
    rows.append(("total (format+pii+heuristics)", total, n / total))
    language_seconds = with_language.timings["quality.language"]
    rows.append(("language id (extra)", language_seconds, n / language_seconds if language_seconds else 0.0))
    rows.append(("total with language id", total_with_language, n / total_with_language))

    print(
        f"cleaned stage: {n:,} records, {chars / n:.0f} chars/record, {os.cpu_count()} cores, polars {pl.__version__}"
    )
    print(f"{'step':<32}{'seconds':>10}{'records/s':>14}")
    for name, seconds, rate in rows:
        print(f"{name:<32}{seconds:>10.3f}{rate:>14,.0f}")
    print(
        f"kept {result.kept.height:,}, rejected {result.rejected_by_rule}, redactions {result.tables['redactions'].height:,}"
    )
    print(
        f"target >= {TARGET_RECORDS_PER_SECOND:,} records/s without language id: {'met' if n / total >= TARGET_RECORDS_PER_SECOND else 'NOT met'}"
    )
    summary = {
        "benchmark": "clean",
        "records": n,
        "chars_per_record": round(chars / n, 1),
        "cores": os.cpu_count(),
        "seconds": {name: round(seconds, 4) for name, seconds, _ in rows},
        "records_per_second": {name: round(rate) for name, _, rate in rows},
        "target_records_per_second": TARGET_RECORDS_PER_SECOND,
        "target_met": n / total >= TARGET_RECORDS_PER_SECOND,
        "counters": result.counters,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
