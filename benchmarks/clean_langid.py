"""Language ID of the cleaned stage, measured: thresher's fastText lid.176 path against lingua.

Reads every sentence of /work/shared/corpora/langid/<code>.txt (one sentence a line, the file name
is the ISO 639-1 code) and labels each with

- thresher: ``confident_languages`` with ``LanguageRule.min_probability``, on the text as the
  ``wrong_language`` rule prepares it (whitespace collapsed, first ``max_chars`` characters): a
  sentence below the probability is left unlabelled, as the rule leaves it unjudged;
- lingua (``lingua-language-detector``, all its languages, high-accuracy mode, models preloaded
  before timing; ``detect_languages_in_parallel_of`` uses every core).

Prints accuracy per language (and thresher's unlabelled share) with sentences/s for each, then, as
the last line, one JSON object with the same figures. ``measure`` is what benchmarks/clean.py calls.

    .venv/bin/python benchmarks/clean_langid.py [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.cleaning.langid import confident_languages, language_model
from thresher.cleaning.rules import LanguageRule

CORPUS = Path("/work/shared/corpora/langid")


def _prepared(text: str) -> str:
    """The text as ``LanguageRule`` hands it to fastText (no fences in these sentences)."""
    return " ".join(text.split())[: LanguageRule.max_chars]


def _read(corpus_dir: Path) -> dict[str, list[str]]:
    corpus = {}
    for path in sorted(corpus_dir.glob("*.txt")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        corpus[path.stem] = lines
    if not corpus:
        raise FileNotFoundError(f"no <language>.txt files in {corpus_dir}")
    return corpus


def measure(corpus_dir: Path = CORPUS) -> dict[str, Any]:
    """Per-language accuracy of both detectors, thresher's unlabelled share, and sentences/s.

    Why both in one run: the comparison is only fair on the same sentences and the same machine.
    """
    from lingua import LanguageDetectorBuilder

    corpus = _read(corpus_dir)
    texts = [_prepared(t) for lines in corpus.values() for t in lines]
    truth = [code for code, lines in corpus.items() for _ in lines]

    language_model()  # loaded once, outside the timing (the stage loads it once per process)
    clock = time.perf_counter()
    ours = confident_languages(texts, LanguageRule.min_probability)
    ours_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()
    lingua_load_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    detected = detector.detect_languages_in_parallel_of(texts)
    lingua_seconds = time.perf_counter() - clock
    theirs = [lang.iso_code_639_1.name.lower() if lang is not None else None for lang in detected]

    languages = {}
    for code in corpus:
        rows = [i for i, t in enumerate(truth) if t == code]
        n = len(rows)
        languages[code] = {
            "sentences": n,
            "thresher_accuracy": round(sum(ours[i] == code for i in rows) / n, 4),
            "thresher_unlabelled": round(sum(ours[i] is None for i in rows) / n, 4),
            "lingua_accuracy": round(sum(theirs[i] == code for i in rows) / n, 4),
        }
    total = len(texts)
    return {
        "sentences": total,
        "min_probability": LanguageRule.min_probability,
        "cores": os.cpu_count(),
        "languages": languages,
        "thresher_accuracy": round(sum(a == b for a, b in zip(ours, truth, strict=True)) / total, 4),
        "thresher_unlabelled": round(sum(a is None for a in ours) / total, 4),
        "lingua_accuracy": round(sum(a == b for a, b in zip(theirs, truth, strict=True)) / total, 4),
        "thresher_sentences_per_second": round(total / ours_seconds),
        "lingua_sentences_per_second": round(total / lingua_seconds),
        "lingua_model_load_seconds": round(lingua_load_seconds, 2),
    }


def print_table(figures: dict) -> None:
    """The figures of ``measure`` as the table this script prints."""
    print(f"{'lang':<6}{'n':>6}{'thresher':>10}{'unlabelled':>12}{'lingua':>9}")
    for code, row in figures["languages"].items():
        print(
            f"{code:<6}{row['sentences']:>6}{row['thresher_accuracy']:>10.3f}"
            f"{row['thresher_unlabelled']:>12.3f}{row['lingua_accuracy']:>9.3f}"
        )
    print(
        f"{'all':<6}{figures['sentences']:>6}{figures['thresher_accuracy']:>10.3f}"
        f"{figures['thresher_unlabelled']:>12.3f}{figures['lingua_accuracy']:>9.3f}"
    )
    print(
        f"sentences/s: thresher (fastText lid.176, p >= {figures['min_probability']}, one thread) "
        f"{figures['thresher_sentences_per_second']:,}; lingua ({figures['cores']} cores, parallel API) "
        f"{figures['lingua_sentences_per_second']:,} (model load {figures['lingua_model_load_seconds']} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    figures = measure(parser.parse_args().corpus)
    print_table(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
