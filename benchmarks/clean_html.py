"""How well HTML extraction keeps a page's article text: thresher's main-content mode, its plain
HTML-to-text of the whole page, and trafilatura, on the article-extraction benchmark corpus.

The corpus is ``../shared/corpora/html/article_extraction`` (181 real pages, gzipped, in ``html/``;
the true article text in ``ground-truth.json``), read in place. The metric is the bag-of-tokens
overlap of scrapinghub's article-extraction-benchmark: tokens are lowercase words, and with multiset
counts P = |kept & truth| / |kept|, R = |kept & truth| / |truth|. Reported per extractor: mean
precision/recall/F1 over pages, the same computed over all tokens at once (micro), and pages/s.
Prints a table, then one JSON object with the same figures as the last line.

    .venv/bin/python benchmarks/clean_html.py [--corpus DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.cleaning.html import html_to_text, main_content

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "html" / "article_extraction"
_WORD = re.compile(r"\w+")


def tokens(text: str) -> Counter[str]:
    """The benchmark's tokens: lowercase words, counted."""
    return Counter(_WORD.findall(text.lower()))


def load_corpus(corpus_dir: Path, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(page id, decoded HTML, true article text) for every page that has a ground truth."""
    truth = json.loads((corpus_dir / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for path in sorted((corpus_dir / "html").glob("*.html.gz")):
        page_id = path.name.removesuffix(".html.gz")
        if page_id in truth:
            raw = gzip.decompress(path.read_bytes())
            pages.append((page_id, raw.decode("utf-8", errors="replace"), truth[page_id]["articleBody"]))
    return pages[:limit] if limit else pages


def _trafilatura(markup: str) -> str:
    import trafilatura

    return trafilatura.extract(markup, include_comments=False, include_tables=True) or ""


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "thresher.main_content": main_content,
    "thresher.html_to_text": html_to_text,
    "trafilatura": _trafilatura,
}


def score(kept: Counter[str], truth: Counter[str]) -> tuple[int, int, int]:
    """(overlap, kept tokens, true tokens) with multiset counts."""
    return sum((kept & truth).values()), sum(kept.values()), sum(truth.values())


def _prf(overlap: int, kept: int, truth: int) -> tuple[float, float, float]:
    p = overlap / kept if kept else 0.0
    r = overlap / truth if truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def evaluate(extract: Callable[[str], str], pages: list[tuple[str, str, str]]) -> dict[str, float]:
    """Mean and micro P/R/F1 of one extractor over ``pages``, and its throughput."""
    per_page: list[tuple[float, float, float]] = []
    totals = [0, 0, 0]
    seconds = 0.0
    for _, markup, truth in pages:
        clock = time.perf_counter()
        kept = extract(markup)
        seconds += time.perf_counter() - clock
        counts = score(tokens(kept), tokens(truth))
        per_page.append(_prf(*counts))
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    n = len(per_page) or 1
    micro = _prf(*totals)
    return {
        "precision": round(sum(p for p, _, _ in per_page) / n, 4),
        "recall": round(sum(r for _, r, _ in per_page) / n, 4),
        "f1": round(sum(f for _, _, f in per_page) / n, 4),
        "micro_precision": round(micro[0], 4),
        "micro_recall": round(micro[1], 4),
        "micro_f1": round(micro[2], 4),
        "pages_per_second": round(len(per_page) / seconds, 1) if seconds else 0.0,
    }


def measure(corpus_dir: Path = CORPUS, limit: int | None = None) -> dict:
    """Every extractor's figures on the corpus: ``{"pages": n, "extractors": {name: figures}}``."""
    pages = load_corpus(corpus_dir, limit)
    return {"pages": len(pages), "extractors": {name: evaluate(fn, pages) for name, fn in EXTRACTORS.items()}}


def print_table(figures: dict) -> None:
    """The figures of ``measure`` as the table this script prints."""
    print(f"article extraction, {figures['pages']} pages (bag-of-tokens overlap with the ground truth)")
    header = (
        f"{'extractor':<24}{'P':>7}{'R':>7}{'F1':>7}{'microP':>8}{'microR':>8}{'microF1':>9}{'pages/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, f in figures["extractors"].items():
        print(
            f"{name:<24}{f['precision']:>7.3f}{f['recall']:>7.3f}{f['f1']:>7.3f}{f['micro_precision']:>8.3f}"
            f"{f['micro_recall']:>8.3f}{f['micro_f1']:>9.3f}{f['pages_per_second']:>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pages (sorted by id)")
    args = parser.parse_args()
    figures = measure(args.corpus, args.limit)
    print_table(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
