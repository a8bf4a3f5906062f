"""Throughput, memory and pair accuracy of the deduped stage, beside datasketch (and DataTrove) MinHash.

Data: generated random-word conversations (100,000 and 1,000,000 records) with planted exact
duplicates (case/punctuation variants) and near duplicates (each word substituted with probability
1.5%, so most long copies stay above Jaccard 0.8 on word 5-grams and short ones may fall below it),
and ../shared/corpora/neardup (every file: T0 prompts built from the same source texts by different
templates, natural near duplicates).

Per data set, each in a fresh process (so peak RSS is its own):
- thresher exact only (MinHash disabled), and exact + near, on all records;
- datasketch MinHashLSH at equal parameters (same shingles, 128 permutations, same bands x rows) on a
  subset (its per-record Python is too slow for a million records), and thresher on the same subset;
- DataTrove's MinHash pipeline (signatures, buckets, clusters) on the same subset, when a Python with
  datatrove is given (--datatrove-python);
- pair precision/recall/F1 at the threshold on a sample (whole families of planted variants, or all
  of neardup) against brute-force true Jaccard of the shingle sets (Python sets, sparse product).

    .venv/bin/python benchmarks/dedup.py [--sizes 100000 1000000] [--subset 20000] [--datatrove-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import CORPORA
from thresher.config import DedupConfig, MinHashConfig
from thresher.dedup import (
    LSH_ERROR_WEIGHTS,
    Deduplicator,
    dedup_texts,
    lsh_params,
    near_duplicate_pairs,
    shingle_set,
)

SEED = 1234
VOCAB = 30_000
MH = MinHashConfig()
BANDS, ROWS = lsh_params(MH.threshold, MH.num_perm, *LSH_ERROR_WEIGHTS)


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
    family = np.concatenate([np.arange(n_orig), near_src])
    family = np.concatenate([family, family[exact_src]])
    order = rng.permutation(n)
    texts = texts.gather(order)
    family = family[order]
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
            # Ground truth for sampling only: the original each record was derived from.
            "family": family,
        }
    )


def neardup_records() -> pl.DataFrame:
    """Every file of CORPORA/neardup as user (prompt) / assistant (completion) records."""
    frames = []
    for k, path in enumerate(sorted((CORPORA / "neardup").rglob("*.jsonl"))):
        frames.append(
            pl.read_ndjson(path)
            .with_row_index("line", offset=1)
            .select(
                pl.format("{}:{}", pl.lit(f"{k:012d}"), pl.col("line")).alias("record_id"),
                pl.lit("neardup").alias("batch"),
                pl.concat_list(
                    pl.struct(role=pl.lit("user"), content=pl.col("prompt")),
                    pl.struct(
                        role=pl.lit("assistant"),
                        content=pl.col("completion").str.replace("<|endoftext|>", "", literal=True),
                    ),
                ).alias("messages"),
                pl.lit(path.name).alias("source_file"),
                pl.col("line").cast(pl.Int64).alias("source_line"),
                pl.lit(k, dtype=pl.Int64).alias("family"),
            )
        )
    return pl.concat(frames)


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: the latter survives fork+exec and would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _row(data: str, engine: str, phase: str, n: int, seconds: float, dups: int | None) -> dict:
    return {
        "data": data,
        "engine": engine,
        "phase": phase,
        "records": n,
        "seconds": seconds,
        "records_per_s": n / seconds if seconds else float("nan"),
        "peak_rss_mb": _peak_rss_mb(),
        "duplicates": dups,
    }


def run_thresher(data: str, path: str, n: int, near: bool) -> dict:
    records = pl.read_parquet(path, n_rows=n).drop("family")
    config = DedupConfig(minhash=MinHashConfig(enabled=near))
    start = time.perf_counter()
    result = Deduplicator(config).run(records)
    seconds = time.perf_counter() - start
    result.check_conservation()
    return _row(data, "thresher", "exact+near" if near else "exact", n, seconds, result.rejected.height)


def _shingle_bytes(texts: list[str]) -> list[list[bytes]]:
    return [[" ".join(g).encode() for g in shingle_set(t, MH)] for t in texts]


def run_datasketch(data: str, path: str, n: int) -> dict:
    """Normalize, shingle, bulk MinHash, then insert each record unless an LSH query hits."""
    from datasketch import MinHash, MinHashLSH

    records = pl.read_parquet(path, n_rows=n)
    start = time.perf_counter()
    texts = dedup_texts(records, DedupConfig().normalization).to_list()
    minhashes = MinHash.bulk(_shingle_bytes(texts), num_perm=MH.num_perm, seed=MH.seed)
    lsh = MinHashLSH(threshold=MH.threshold, num_perm=MH.num_perm, params=(BANDS, ROWS))
    duplicates = 0
    for i, m in enumerate(minhashes):
        if lsh.query(m):
            duplicates += 1
        else:
            lsh.insert(str(i), m)
    return _row(data, "datasketch", "near (lsh)", n, time.perf_counter() - start, duplicates)


DATATROVE_SCRIPT = """
import json, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
    MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.hashing import HashConfig
folder, work, bands, rows, ngram = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
config = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, hash_config=HashConfig(hash_fc="xxhash", precision=64))
start = time.perf_counter()
for pipeline in (
    [JsonlReader(folder), MinhashDedupSignature(output_folder=work + "/sigs", config=config)],
    [MinhashDedupBuckets(input_folder=work + "/sigs", output_folder=work + "/buckets", config=config)],
    [MinhashDedupCluster(input_folder=work + "/buckets", output_folder=work + "/remove", config=config)],
):
    tasks = bands if isinstance(pipeline[0], MinhashDedupBuckets) else 1
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=work + "/logs").run()
seconds = time.perf_counter() - start
import glob, struct
removed = sum(__import__("os").path.getsize(f) // 4 for f in glob.glob(work + "/remove/*.remove"))
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": seconds, "duplicates": removed, "peak_rss_mb": int(peak) / 1024}))
"""


def run_datatrove(python: str, data: str, path: str, n: int) -> dict:
    """DataTrove 0.10.1's MinHash pipeline (signatures, buckets, clusters) in its own interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        texts = dedup_texts(pl.read_parquet(path, n_rows=n), DedupConfig().normalization)
        Path(tmp, "in").mkdir()
        pl.DataFrame({"id": [str(i) for i in range(n)], "text": texts}).write_ndjson(
            Path(tmp, "in", "data.jsonl")
        )
        out = subprocess.run(
            [
                python,
                "-c",
                DATATROVE_SCRIPT,
                f"{tmp}/in",
                f"{tmp}/work",
                str(BANDS),
                str(ROWS),
                str(MH.ngram),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
    row = _row(data, "datatrove", "near (pipeline)", n, got["seconds"], got["duplicates"])
    row["peak_rss_mb"] = got["peak_rss_mb"]
    return row


def brute_force_pairs(texts: list[str]) -> dict[tuple[int, int], float]:
    """True Jaccard of every pair of texts sharing a shingle (Python shingle sets, sparse product)."""
    from scipy.sparse import csr_matrix, triu

    vocabulary: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for i, text in enumerate(texts):
        for shingle in shingle_set(text, MH):
            rows.append(i)
            cols.append(vocabulary.setdefault(shingle, len(vocabulary)))
    x = csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(texts), len(vocabulary)))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    inter = triu(x @ x.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    return {(int(i), int(j)): float(v) for i, j, v in zip(inter.row, inter.col, jac, strict=True)}


def evaluate(data: str, path: str, n: int, sample: int) -> list[dict]:
    """Pair precision/recall/F1 of thresher (LSH + true-Jaccard confirmation) and datasketch (LSH
    candidates) against brute force, on a sample of whole families (so that it holds duplicates)."""
    from datasketch import MinHash, MinHashLSH

    records = pl.read_parquet(path, n_rows=n)
    families = records["family"].unique().sort()
    if records.height > sample:
        rng = np.random.default_rng(SEED)
        chosen = rng.choice(families.to_numpy(), size=min(len(families), int(sample / 1.2)), replace=False)
        records = records.filter(pl.col("family").is_in(pl.Series(chosen).implode()))
    texts = dedup_texts(records, DedupConfig().normalization).to_list()
    truth_j = brute_force_pairs(texts)
    truth = {p for p, v in truth_j.items() if v >= MH.threshold}
    found = {}
    found["thresher"] = set(near_duplicate_pairs(pl.Series(texts), MH).select("i", "j").iter_rows())
    minhashes = MinHash.bulk(_shingle_bytes(texts), num_perm=MH.num_perm, seed=MH.seed)
    lsh = MinHashLSH(threshold=MH.threshold, num_perm=MH.num_perm, params=(BANDS, ROWS))
    for i, m in enumerate(minhashes):
        lsh.insert(i, m)
    found["datasketch"] = {
        (min(i, j), max(i, j)) for i, m in enumerate(minhashes) for j in lsh.query(m) if j != i
    }
    out = []
    for engine, pairs in found.items():
        tp = len(pairs & truth)
        precision = tp / len(pairs) if pairs else 1.0
        recall = tp / len(truth) if truth else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(
            {
                "data": data,
                "engine": engine,
                "sample": len(texts),
                "true_pairs": len(truth),
                "found_pairs": len(pairs),
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "found_below_threshold": len(pairs - truth),
            }
        )
    return out


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument("--sample", type=int, default=5_000)
    parser.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON"))
    args = parser.parse_args()
    runs, accuracy, notes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = []
        for size in args.sizes:
            path = str(Path(tmp) / f"generated_{size}.parquet")
            generate(size).write_parquet(path)
            datasets.append((f"generated {size}", path, size))
        path = str(Path(tmp) / "neardup.parquet")
        neardup = neardup_records()
        neardup.write_parquet(path)
        datasets.append(("neardup", path, neardup.height))
        for name, path, size in datasets:
            subset = min(size, args.subset)
            runs.append(in_fresh_process(run_thresher, name, path, size, False))
            runs.append(in_fresh_process(run_thresher, name, path, size, True))
            if subset < size:
                runs.append(in_fresh_process(run_thresher, name, path, subset, True))
            runs.append(in_fresh_process(run_datasketch, name, path, subset))
            if args.datatrove_python:
                try:
                    runs.append(run_datatrove(args.datatrove_python, name, path, subset))
                except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                    notes.append(f"datatrove failed on {name}: {type(exc).__name__}")
            accuracy.extend(in_fresh_process(evaluate, name, path, size, args.sample))
    if not args.datatrove_python:
        notes.append("datatrove not run: pass --datatrove-python with a Python that has datatrove==0.10.1")
    print(
        f"num_perm={MH.num_perm} threshold={MH.threshold} shingles=word {MH.ngram}-grams lsh bands={BANDS} "
        f"rows={ROWS}; generated: 5% exact, 10% near duplicates planted; datasketch/datatrove on the first "
        f"{args.subset} records (too slow for a million)"
    )
    header = (
        f"{'data':<18} {'engine':<10} {'phase':<15} {'records':>8} {'seconds':>8} {'records/s':>10} "
        f"{'peak RSS MB':>12} {'dups':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r['data']:<18} {r['engine']:<10} {r['phase']:<15} {r['records']:>8} {r['seconds']:>8.2f} "
            f"{r['records_per_s']:>10.0f} {r['peak_rss_mb']:>12.0f} {r['duplicates']:>7}"
        )
    print()
    header = (
        f"{'data':<18} {'engine':<10} {'sample':>7} {'true pairs':>10} {'found':>7} {'precision':>9} "
        f"{'recall':>7} {'F1':>6} {'below t':>7}"
    )
    print(header)
    print("-" * len(header))
    for a in accuracy:
        print(
            f"{a['data']:<18} {a['engine']:<10} {a['sample']:>7} {a['true_pairs']:>10} {a['found_pairs']:>7} "
            f"{a['precision']:>9.3f} {a['recall']:>7.3f} {a['f1']:>6.3f} {a['found_below_threshold']:>7}"
        )
    for note in notes:
        print(note)

    def rounded(row: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}

    summary = {
        "bands": BANDS,
        "rows": ROWS,
        "subset": args.subset,
        "runs": [rounded(r) for r in runs],
        "accuracy": [rounded(a) for a in accuracy],
        "notes": notes,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
