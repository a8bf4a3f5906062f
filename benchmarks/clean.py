"""The cleaned stage measured: throughput on generated records, and quality on three real corpora.

Throughput: N generated chat records per size (default 100,000 and 1,000,000) with planted junk and
PII in every record: HTML, chat-template tokens, mojibake, control characters, runs of spaces,
emails, phones, card numbers (Luhn-valid and not), IBANs, SSNs, dates of birth, names, addresses,
URL credentials, IPs, API keys, refusals, placeholders, truncated and repetitive answers, fenced
code. ``Cleaner`` runs twice per size: without language ID (the target is >= 50,000 records/s for
formatting + PII + heuristics) and with it; then once more without it on the same records written
as model output writes them (``--non-ascii``: curly apostrophes, and accents, curly quotes and CJK
in every message), where Unicode-aware regexes can fall off their fast path.

Quality, each beside a reference implementation in the same run (the scripts beside this one, each
also runnable alone): HTML extraction on ../shared/corpora/html/article_extraction vs trafilatura
(``clean_html.py``), PII detection on ../shared/corpora/pii/presidio vs Presidio (``clean_pii.py``),
language ID on ../shared/corpora/langid vs lingua (``clean_langid.py``).

    .venv/bin/python benchmarks/clean.py [--sizes N ...] [--seed S] [--skip-corpora] [--no-non-ascii]

Prints the tables, then one JSON object with every figure as the last line.
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

import clean_html
import clean_langid
import clean_pii

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
    "Please refund {iban}; my SSN {ssn} is on file and I was born on {dob}.",
    "My name is {person} and I moved to {address} last month. Can you update my account?",
    "The job pulls from https://{creds}@git.example.com/repo.git and then fails. Why?",
    "Itâ€™s the second time the cafÃ© order went wrong.<|im_end|>",
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
    "[INST] Lorem ipsum dolor sit amet, consectetur adipiscing elit. [/INST]",
    "[Insert your answer here]",
]


def _luhn_complete(prefix: np.ndarray) -> np.ndarray:
    """Append the Luhn check digit to each row of 15 digits."""
    digits = prefix[:, ::-1].astype(np.int64)
    doubled = digits.copy()
    doubled[:, 0::2] *= 2
    doubled[doubled > 9] -= 9
    check = (10 - doubled.sum(axis=1) % 10) % 10
    return np.concatenate([prefix, check[:, None]], axis=1)


# What the non-ASCII corpus puts after the first sentence of each message (besides curly apostrophes).
NON_ASCII_TAIL = " café naïve “quoted” 東京では"


def generate(n: int, seed: int, non_ascii: bool = False) -> pl.DataFrame:
    """``n`` canonical records with planted PII and junk, built column-wise (fast, deterministic).

    ``non_ascii``: the same records with every "'" a "’" and ``NON_ASCII_TAIL`` after the first
    sentence of every message with more than one (so that the same records are rejected, by the same
    rules: a message's start and end stay as they are).
    """
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
            "iban": pl.Series(["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"]).gather(idx % 2),
            "ssn": pl.Series([f"{100 + i % 500}-{1 + i % 98:02d}-{1 + i % 9998:04d}" for i in idx]),
            "dob": pl.Series([f"{1 + i % 28} March {1950 + i % 50}" for i in idx]),
            "person": pl.Series(["Maria Lindqvist", "Kofi Okafor", "Hiro Tanaka"]).gather(idx % 3),
            "address": pl.Series([f"{10 + i % 900} Maple Street" for i in idx]),
            "creds": pl.Series([f"deploy:pw{i:08d}xyz" for i in idx]),
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
    # and truncated or repetitive endings stay at its end; refusals and placeholders get none.
    alone = responses.str.starts_with("I'm sorry") | responses.str.starts_with("[")
    frame = values.with_columns(
        prompt=prompts + " " + filler.gather(idx % n_filler),
        response=pl.when(pl.lit(alone)).then(responses).otherwise(pl.Series(prose) + "\n\n" + responses),
    )
    for name in values.columns:
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
    if non_ascii:
        content = (
            pl.element()
            .struct.field("content")
            .str.replace_all("'", "’", literal=True)
            .str.replace(r"([.?!:])([ \n])", "${1}" + NON_ASCII_TAIL + "${2}")
        )
        records = records.with_columns(
            pl.col("messages").list.eval(
                pl.struct(pl.element().struct.field("role"), content.alias("content"))
            )
        )
    return conform(records)


def _per_step(n: int, seconds: dict[str, float]) -> dict:
    return {
        "seconds": {name: round(s, 4) for name, s in seconds.items()},
        "records_per_second": {name: round(n / s) if s else None for name, s in seconds.items()},
    }


def throughput(n: int, seed: int, non_ascii: bool = True) -> dict:
    """Seconds and records/s per step on ``n`` generated records, without and with language ID, and
    (``non_ascii``) without it on the non-ASCII variant of the same records."""
    records = generate(n, seed)
    chars = int(
        records.select(
            pl.col("messages")
            .list.eval(pl.element().struct.field("content").str.len_chars())
            .list.sum()
            .sum()
        ).item()
    )
    heuristics = Cleaner(CleanConfig(quality=QualityConfig(language=None)))
    clock = time.perf_counter()
    result = heuristics.run(records)
    total = time.perf_counter() - clock
    result.check_conservation()

    with_language = Cleaner(CleanConfig())
    clock = time.perf_counter()
    with_language.run(records).check_conservation()
    total_with_language = time.perf_counter() - clock

    steps = {name: seconds for name, seconds in heuristics.timings.items() if name != "quality.language"}
    steps["total (format+pii+heuristics)"] = total
    steps["language id (extra)"] = with_language.timings["quality.language"]
    steps["total with language id"] = total_with_language
    run = {
        "records": n,
        "chars_per_record": round(chars / n, 1),
        **_per_step(n, steps),
        "target_met": n / total >= TARGET_RECORDS_PER_SECOND,
        "kept": result.kept.height,
        "rejected_by_rule": result.rejected_by_rule,
        "redactions": result.tables["redactions"].height,
        "counters": result.counters,
    }
    if non_ascii:
        variant = generate(n, seed, non_ascii=True)
        cleaner = Cleaner(CleanConfig(quality=QualityConfig(language=None)))
        clock = time.perf_counter()
        variant_result = cleaner.run(variant)
        variant_total = time.perf_counter() - clock
        variant_result.check_conservation()
        variant_steps = {name: s for name, s in cleaner.timings.items() if name != "quality.language"}
        variant_steps["total (format+pii+heuristics)"] = variant_total
        run["non_ascii"] = {
            **_per_step(n, variant_steps),
            "target_met": n / variant_total >= TARGET_RECORDS_PER_SECOND,
            "kept": variant_result.kept.height,
            "redactions": variant_result.tables["redactions"].height,
        }
    return run


def print_throughput(runs: list[dict]) -> None:
    print(f"cleaned stage throughput, {os.cpu_count()} cores, polars {pl.__version__}")
    print(f"{'step':<32}" + "".join(f"{run['records']:>12,} rec  {'rec/s':>10}" for run in runs))
    for name in runs[0]["seconds"]:
        cells = "".join(
            f"{run['seconds'][name]:>14.3f} s {run['records_per_second'][name] or 0:>10,}" for run in runs
        )
        print(f"{name:<32}{cells}")
    for run in runs:
        print(
            f"{run['records']:,} records ({run['chars_per_record']:.0f} chars each): kept {run['kept']:,}, "
            f"redactions {run['redactions']:,}, rejected {run['rejected_by_rule']}; target >= "
            f"{TARGET_RECORDS_PER_SECOND:,} records/s without language id: {'met' if run['target_met'] else 'NOT met'}"
        )
    variants = [run["non_ascii"] for run in runs if "non_ascii" in run]
    if len(variants) == len(runs):
        print(f"the same records, non-ASCII (’ for ', and{NON_ASCII_TAIL!r} after a first sentence):")
        for name in variants[0]["seconds"]:
            cells = "".join(
                f"{v['seconds'][name]:>14.3f} s {v['records_per_second'][name] or 0:>10,}" for v in variants
            )
            print(f"{name:<32}{cells}")
        for run, v in zip(runs, variants, strict=True):
            print(
                f"{run['records']:,} non-ASCII records: kept {v['kept']:,}, redactions {v['redactions']:,}; "
                f"target without language id: {'met' if v['target_met'] else 'NOT met'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-corpora", action="store_true", help="throughput only")
    parser.add_argument(
        "--no-non-ascii", dest="non_ascii", action="store_false", help="skip the non-ASCII throughput run"
    )
    args = parser.parse_args()

    language_model()  # load once, outside the timings
    runs = [throughput(n, args.seed, args.non_ascii) for n in args.sizes]
    print_throughput(runs)
    summary: dict = {
        "benchmark": "clean",
        "cores": os.cpu_count(),
        "target_records_per_second": TARGET_RECORDS_PER_SECOND,
        "throughput": runs,
    }
    if not args.skip_corpora:
        for name, module in (("html", clean_html), ("pii", clean_pii), ("langid", clean_langid)):
            print()
            summary[name] = module.measure()
            module.print_table(summary[name])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
