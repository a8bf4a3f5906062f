"""Throughput and memory of the deduped stage, and of datasketch's MinHashLSH at equal parameters.

Generates random-word conversations with planted exact duplicates (case/punctuation variants) and
near duplicates (each word substituted with probability 1.5%, so most
long copies stay above Jaccard 0.8 on word 5-grams and short ones may fall below it), then times:

- thresher exact only (MinHash disabled) on all records,
- thresher exact + near on all records,
- thresher exact + near and datasketch MinHashLSH (bulk MinHash, insert-unless-query-hits) on a subset.

The records are generated once and written to Parquet; each measurement runs in a fresh process
that reads them, so its peak RSS is its own ("data RSS" is the process with the records loaded,
before the run). The subset is the first records of the same data. Prints a table, then one JSON object with the same figures on the last line.

    .venv/bin/python benchmarks/dedup.py [--records 100000] [--subset 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.config import DedupConfig, MinHashConfig
from thresher.dedup import Deduplicator, dedup_texts, lsh_params

SEED = 1234
VOCAB = 30_000


def generate(n: int, seed: int = SEED) -> pl.DataFrame:
    """``n`` records: 85% originals, 5% exact variants (upper-cased, punctuated), 10% near copies."""
    rng = np.random.default_rng(seed)
    n_exact, n_near = n // 20, n // 10
    n_orig = n - n_exact - n_near
    lengths = rng.integers(30, 200, n_orig)
    words = np.minimum(rng.zipf(1.2, lengths.sum()), VOCAB) + rng.integers(0, VOCAB, lengths.sum()) % 7
    doc = np.repeat(np.arange(n_orig), lengths)
    originals = pl.DataFrame({"doc": doc, "w": words}).with_columns(
        ("w" + pl.col("w").cast(pl.String)).alias("w")
    )
    # Near copies: each word of a copied original replaced with probability 1.5%.
    near_src = rng.integers(0, n_orig, n_near)
    near = (
        pl.DataFrame({"src": near_src, "copy": np.arange(n_near)})
        .join(originals.with_row_index("pos"), left_on="src", right_on="doc")
        .sort("copy", "pos")
    )
    swap = rng.random(near.height) < 0.015
    near = near.with_columns(
        pl.when(pl.Series(swap))
        .then(pl.lit("z") + pl.Series(rng.integers(0, VOCAB, near.height)).cast(pl.String))
        .otherwise(pl.col("w"))
        .alias("w")
    )
    texts = pl.concat(
        [
            originals.group_by("doc", maintain_order=True).agg(pl.col("w").str.join(" "))["w"],
            near.group_by("copy", maintain_order=True).agg(pl.col("w").str.join(" "))["w"],
        ]
    )
    exact_src = rng.integers(0, n_orig, n_exact)
    texts = pl.concat([texts, (texts.gather(exact_src).str.to_uppercase() + "!!")])
    order = rng.permutation(n)
    texts = texts.gather(order)
    return pl.DataFrame(
        {
            "record_id": [f"bench:{i}" for i in range(n)],
            "batch": "bench",
            "messages": pl.select(
                pl.concat_list(
                    pl.struct(role=pl.lit("user"), content=pl.lit("Summarize:")),
                    pl.struct(role=pl.lit("assistant"), content=pl.lit(texts)),
                )
            ).to_series(),
            "source_line": np.arange(1, n + 1),
        }
    )


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: the latter survives fork+exec and would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _load(path: str, n: int) -> tuple[pl.DataFrame, float]:
    """The first ``n`` generated records, and the process's RSS once they are loaded (the baseline)."""
    records = pl.read_parquet(path, n_rows=n)
    return records, _rss_mb()


def run_thresher(path: str, n: int, near: bool) -> dict:
    records, data_rss = _load(path, n)
    config = DedupConfig(minhash=MinHashConfig(enabled=near))
    start = time.perf_counter()
    result = Deduplicator(config).run(records)
    seconds = time.perf_counter() - start
    result.check_conservation()
    return {
        "engine": "thresher",
        "phase": "exact+near" if near else "exact",
        "records": n,
        "seconds": seconds,
        "records_per_s": n / seconds,
        "data_rss_mb": data_rss,
        "peak_rss_mb": _peak_rss_mb(),
        "duplicates": result.rejected.height,
    }


def run_datasketch(path: str, n: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    records, data_rss = _load(path, n)
    mh_config = MinHashConfig()
    texts = dedup_texts(records, DedupConfig().normalization)
    start = time.perf_counter()
    shingle_sets = []
    for text in texts.to_list():  # datasketch takes Python byte strings: shingling is per record here
        tokens = text.split()
        k = mh_config.ngram
        grams = [tokens] if len(tokens) < k else [tokens[i : i + k] for i in range(len(tokens) - k + 1)]
        shingle_sets.append([" ".join(g).encode() for g in grams])
    minhashes = MinHash.bulk(shingle_sets, num_perm=mh_config.num_perm, seed=mh_config.seed)
    lsh = MinHashLSH(threshold=mh_config.threshold, num_perm=mh_config.num_perm)
    duplicates = 0
    for i, m in enumerate(minhashes):
        if lsh.query(m):
            duplicates += 1
        else:
            lsh.insert(str(i), m)
    seconds = time.perf_counter() - start
    return {
        "engine": "datasketch",
        "phase": "near (lsh)",
        "records": n,
        "seconds": seconds,
        "records_per_s": n / seconds,
        "data_rss_mb": data_rss,
        "peak_rss_mb": _peak_rss_mb(),
        "duplicates": duplicates,
    }


def in_fresh_process(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--subset", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "records.parquet")
        generate(args.records).write_parquet(path)
        rows = [
            in_fresh_process(run_thresher, path, args.records, False),
            in_fresh_process(run_thresher, path, args.records, True),
            in_fresh_process(run_thresher, path, args.subset, True),
            in_fresh_process(run_datasketch, path, args.subset),
        ]
    bands, rows_per_band = lsh_params(MinHashConfig().threshold, MinHashConfig().num_perm)
    print(
        f"num_perm={MinHashConfig().num_perm} threshold={MinHashConfig().threshold} "
        f"shingles=word {MinHashConfig().ngram}-grams lsh bands={bands} rows={rows_per_band}; "
        f"planted: 5% exact, 10% near duplicates"
    )
    header = (
        f"{'engine':<11} {'phase':<11} {'records':>8} {'seconds':>8} {'records/s':>10} "
        f"{'data RSS MB':>12} {'peak RSS MB':>12} {'dups':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['engine']:<11} {r['phase']:<11} {r['records']:>8} {r['seconds']:>8.2f} "
            f"{r['records_per_s']:>10.0f} {r['data_rss_mb']:>12.0f} {r['peak_rss_mb']:>12.0f} {r['duplicates']:>7}"
        )
    summary = {
        "bands": bands,
        "rows": rows_per_band,
        "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
