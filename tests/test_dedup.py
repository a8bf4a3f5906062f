"""Specification of the deduped stage (thresher.dedup)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
import pytest

from tests.conftest import CORPORA
from thresher.config import DedupConfig, IngestConfig, MinHashConfig, NormalizationConfig
from thresher.dedup import (
    CLUSTER_SCHEMA,
    INDEX_SCHEMA,
    Deduplicator,
    MinHasher,
    candidate_pairs,
    dedup_texts,
    earliest_first,
    estimated_jaccard,
    exact_hashes,
    jaccard,
    largest_clusters,
    lsh_params,
    near_duplicate_pairs,
    normalize,
    pair_jaccard,
    shingle_set,
)
from thresher.ingest import read_file
from thresher.records import RECORD_SCHEMA
from thresher.stage import EDGE_SCHEMA, StageResult

GSM8K = CORPORA / "math" / "gsm8k"


def record(
    line: int, user: str, assistant: str = "Sure.", batch: str = "b1", file: str = "aaaaaaaaaaaa"
) -> dict:
    return {
        "record_id": f"{file}:{line}",
        "batch": batch,
        "task": "chat",
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "source_file": f"{batch}.jsonl",
        "source_line": line,
        "origin": "source",
    }


def frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema_overrides={"messages": RECORD_SCHEMA["messages"]})


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def rule_of(result: StageResult) -> dict[str, str]:
    return dict(zip(result.rejected["record_id"], result.rejected["rule"], strict=True))


def detail_of(result: StageResult) -> dict[str, str]:
    return dict(zip(result.rejected["record_id"], result.rejected["detail"], strict=True))


def normalized(df: pl.DataFrame, config: DedupConfig | None = None) -> list[str]:
    config = config or DedupConfig()
    return dedup_texts(df, config.normalization).to_list()


# ------------------------------------------------------------------------------------------ exact


def test_exact_duplicates_differing_in_case_whitespace_and_punctuation_are_caught() -> None:
    df = frame(
        record(1, "What is the capital of France?", "Paris."),
        record(2, "what   is the CAPITAL of france", "paris"),
        record(3, "What is the capital of France?!", "  Paris  "),
        record(4, "What is the capital of Spain?", "Madrid."),
    )
    result = Deduplicator().run(df)

    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:1", "aaaaaaaaaaaa:4"]
    assert rule_of(result) == {"aaaaaaaaaaaa:2": "exact_duplicate", "aaaaaaaaaaaa:3": "exact_duplicate"}
    assert result.counters["exact_duplicates"] == 2
    detail = detail_of(result)["aaaaaaaaaaaa:2"]
    assert detail.startswith("exact duplicate of aaaaaaaaaaaa:1 (normalized text hash ")
    assert detail.endswith("); kept aaaaaaaaaaaa:1: earliest")


def test_normalization_is_nfkc_lowercase_no_punctuation_single_spaced() -> None:
    df = frame(record(1, "  Ｆｕｌｌ-width ﬁne,\tＴＥＸＴ!! ", "Ok…"))
    assert normalized(df) == ["user fullwidth fine text assistant ok"]
    keep_case = DedupConfig(normalization=NormalizationConfig(lowercase=False, strip_punctuation=False))
    assert normalized(df, keep_case) == ["user: Full-width fine, TEXT!! assistant: Ok..."]


def test_normalize_collapses_any_whitespace_and_leaves_its_input_alone() -> None:
    texts = pl.Series(["a \n\t b\nc", "x\u00a0y", "  lead  trail  ", "Ｆｕｌｌ"])
    assert normalize(texts, NormalizationConfig()).to_list() == ["a b c", "x y", "lead trail", "full"]
    assert normalize(texts, NormalizationConfig(nfkc=False)).to_list()[:3] == ["a b c", "x y", "lead trail"]
    assert texts.to_list() == ["a \n\t b\nc", "x\u00a0y", "  lead  trail  ", "Ｆｕｌｌ"]


def test_exact_hash_is_xxh3_64_of_the_normalized_text_and_never_changes() -> None:
    # Hard-coded: stored hashes of earlier batches must keep matching after any refactor or upgrade.
    assert exact_hashes(pl.Series(["user hello assistant hi"])).tolist() == [0x4FC4AD4FCA9686F4]


def test_the_same_prompt_with_different_answers_is_not_a_duplicate() -> None:
    df = frame(
        record(1, "Tell me a joke.", "A horse walks into a bar."),
        record(2, "Tell me a joke.", "Knock knock."),
    )
    assert Deduplicator().run(df).rejected.is_empty()


# ------------------------------------------------------------------------------------------- near


def _near_pair(shared: int, total: int = 200) -> pl.DataFrame:
    """Two records whose texts share their first ``shared`` of ``total`` words."""
    base = words("w", total)
    other = base[:shared] + words("x", total - shared)
    return frame(record(1, " ".join(base), "ok"), record(2, " ".join(other), "ok"))


def test_a_near_duplicate_at_jaccard_09_is_caught() -> None:
    df = _near_pair(shared=190)
    a, b = (shingle_set(t, MinHashConfig()) for t in normalized(df))
    assert 0.88 < jaccard(a, b) < 0.92

    result = Deduplicator().run(df)

    assert rule_of(result) == {"aaaaaaaaaaaa:2": "near_duplicate"}
    detail = detail_of(result)["aaaaaaaaaaaa:2"]
    # The detail reports the true Jaccard of the two shingle sets (floored to two decimals).
    assert (
        detail
        == f"near duplicate of aaaaaaaaaaaa:1 (Jaccard {int(jaccard(a, b) * 100) / 100:.2f}); kept aaaaaaaaaaaa:1: earliest"
    )
    assert result.counters["near_duplicates"] == 1
    assert result.counters["confirmed_pairs"] == 1


def test_a_record_at_jaccard_05_is_not_a_near_duplicate() -> None:
    df = _near_pair(shared=133)
    a, b = (shingle_set(t, MinHashConfig()) for t in normalized(df))
    assert 0.47 < jaccard(a, b) < 0.53

    result = Deduplicator().run(df)

    assert result.rejected.is_empty()
    assert result.counters["near_duplicates"] == 0


def test_texts_shorter_than_n_words_are_one_shingle() -> None:
    config = MinHashConfig(ngram=5)
    assert shingle_set("a b c", config) == {("a", "b", "c")}
    hasher = MinHasher(config)
    shingles, doc = hasher.shingle_hashes(pl.Series(["a b c", "", "a b c d e f"]))
    assert doc.tolist() == [0, 1, 2, 2]
    # The empty text is a shingle too (of no tokens), so every record has a signature.
    assert len(np.unique(shingles)) == 4


def test_with_exact_matching_disabled_identical_texts_are_near_duplicates_at_jaccard_1() -> None:
    df = frame(record(1, "same words here", "ok"), record(2, "Same words, here!", "ok"))
    result = Deduplicator(DedupConfig(exact=False)).run(df)
    assert rule_of(result) == {"aaaaaaaaaaaa:2": "near_duplicate"}
    assert "(Jaccard 1.00)" in detail_of(result)["aaaaaaaaaaaa:2"]


def test_with_minhash_disabled_only_exact_duplicates_are_removed() -> None:
    df = pl.concat([_near_pair(shared=195), frame(record(3, " ".join(words("w", 200)), "ok"))])
    result = Deduplicator(DedupConfig(minhash=MinHashConfig(enabled=False))).run(df)
    assert rule_of(result) == {"aaaaaaaaaaaa:3": "exact_duplicate"}
    assert result.tables["dedup_index"]["signature"].null_count() == 2


def test_an_exact_copy_of_a_near_duplicate_is_attributed_to_the_kept_record() -> None:
    df = pl.concat(
        [
            _near_pair(shared=195),
            _near_pair(shared=195)
            .slice(1)
            .with_columns(
                pl.lit("aaaaaaaaaaaa:3").alias("record_id"), pl.lit(3, dtype=pl.Int64).alias("source_line")
            ),
        ]
    )
    result = Deduplicator().run(df)

    assert rule_of(result) == {"aaaaaaaaaaaa:2": "near_duplicate", "aaaaaaaaaaaa:3": "exact_duplicate"}
    detail = detail_of(result)["aaaaaaaaaaaa:3"]
    assert detail.startswith("exact duplicate of aaaaaaaaaaaa:2 (normalized text hash ")
    assert ", itself a near duplicate of aaaaaaaaaaaa:1 (Jaccard 0." in detail
    edges = dict(zip(result.tables["edges"]["child_id"], result.tables["edges"]["parent_id"], strict=True))
    assert edges == {"aaaaaaaaaaaa:2": "aaaaaaaaaaaa:1", "aaaaaaaaaaaa:3": "aaaaaaaaaaaa:1"}


# ---------------------------------------------------------------------------------- keep & tables


def test_the_kept_record_is_the_earliest_whatever_the_row_order() -> None:
    df = frame(record(9, "hello there"), record(3, "Hello, there!"), record(5, "HELLO THERE"))
    result = Deduplicator().run(df)
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:3"]
    assert earliest_first(df).tolist() == [2, 0, 1]


def test_ties_on_source_line_are_broken_by_record_id() -> None:
    df = frame(record(1, "x y z", file="bbbbbbbbbbbb"), record(1, "x y z", file="aaaaaaaaaaaa"))
    assert Deduplicator().run(df).kept["record_id"].to_list() == ["aaaaaaaaaaaa:1"]


def test_kept_frame_is_the_input_records_unchanged_in_input_order() -> None:
    df = frame(record(4, "d"), record(2, "b"), record(3, "b"), record(1, "a"))
    result = Deduplicator().run(df)
    assert result.kept.columns == list(RECORD_SCHEMA)
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:4", "aaaaaaaaaaaa:2", "aaaaaaaaaaaa:1"]
    assert result.kept["messages"].to_list() == df.filter(pl.col("source_line") != 3)["messages"].to_list()


def test_clusters_edges_and_index_describe_the_outcome() -> None:
    df = pl.concat(
        [
            frame(record(1, "Hi"), record(2, "hi!")),
            _near_pair(shared=195).with_columns(
                pl.format("aaaaaaaaaaaa:{}", pl.col("source_line") + 10).alias("record_id"),
                (pl.col("source_line") + 10).alias("source_line"),
            ),
            frame(record(30, "alone")),
        ]
    )
    result = Deduplicator().run(df)

    clusters = result.tables["dedup_clusters"]
    assert clusters.schema == pl.Schema(CLUSTER_SCHEMA)
    rows = clusters.select("cluster_id", "record_id", "kept").rows()
    assert rows == [
        ("aaaaaaaaaaaa:1", "aaaaaaaaaaaa:1", True),
        ("aaaaaaaaaaaa:1", "aaaaaaaaaaaa:2", False),
        ("aaaaaaaaaaaa:11", "aaaaaaaaaaaa:11", True),
        ("aaaaaaaaaaaa:11", "aaaaaaaaaaaa:12", False),
    ]
    assert clusters["similarity"][1] == 1.0
    assert 0.8 <= clusters["similarity"][3] < 1.0
    assert result.counters["clusters"] == 2

    edges = result.tables["edges"]
    assert edges.schema == pl.Schema(EDGE_SCHEMA)
    assert edges["relation"].unique().to_list() == ["duplicate_of"]
    assert edges["detail"].to_list() == result.rejected["detail"].to_list()

    index = result.tables["dedup_index"]
    assert index.schema == pl.Schema(INDEX_SCHEMA)
    assert index["record_id"].to_list() == result.kept["record_id"].to_list()
    assert index["signature"].list.len().unique().to_list() == [128]


def test_details_never_quote_record_text() -> None:
    secret = "alice.smith@example.com"
    df = frame(record(1, f"mail {secret} now"), record(2, f"Mail {secret} now!"))
    result = Deduplicator().run(df)
    assert result.rejected.height == 1
    assert not any(w in result.rejected["detail"][0] for w in ("alice", "mail", "now", "example"))


def test_conservation_holds_and_nothing_is_lost() -> None:
    near = _near_pair(190).with_columns(
        pl.format("cccccccccccc:{}", pl.col("source_line")).alias("record_id")
    )
    df = pl.concat([frame(*(record(i, f"text {i % 7}") for i in range(1, 50))), near])
    result = Deduplicator().run(df)
    result.check_conservation()
    assert sorted([*result.kept["record_id"], *result.rejected["record_id"]]) == sorted(df["record_id"])
    assert result.rejected["rule"].is_in(["exact_duplicate", "near_duplicate"]).all()
    assert result.rejected["detail"].null_count() == 0


def test_an_empty_batch_gives_an_empty_result() -> None:
    result = Deduplicator().run(frame(record(1, "x")).clear())
    result.check_conservation()
    assert result.kept.is_empty() and result.rejected.is_empty()
    assert result.tables["dedup_index"].schema == pl.Schema(INDEX_SCHEMA)


# ------------------------------------------------------------------------------------ across batches


def test_a_later_batchs_copy_is_rejected_naming_the_prior_record() -> None:
    first = Deduplicator().run(_near_pair(shared=100))
    later = frame(
        record(1, " ".join(words("w", 200)).upper(), "OK!", batch="b2", file="bbbbbbbbbbbb"),
        record(2, " ".join(words("w", 195) + ["new"] * 5), "ok", batch="b2", file="bbbbbbbbbbbb"),
        record(3, "something new", batch="b2", file="bbbbbbbbbbbb"),
    )
    result = Deduplicator().run(later, prior=first.tables["dedup_index"])

    assert rule_of(result) == {"bbbbbbbbbbbb:1": "exact_duplicate", "bbbbbbbbbbbb:2": "near_duplicate"}
    details = detail_of(result)
    assert details["bbbbbbbbbbbb:1"].startswith("exact duplicate of aaaaaaaaaaaa:1 (normalized text hash ")
    assert details["bbbbbbbbbbbb:1"].endswith("; kept aaaaaaaaaaaa:1: accepted in batch b1")
    assert details["bbbbbbbbbbbb:2"].startswith("near duplicate of aaaaaaaaaaaa:1 (Jaccard 0.9")
    assert details["bbbbbbbbbbbb:2"].endswith("; kept aaaaaaaaaaaa:1: accepted in batch b1")
    clusters = result.tables["dedup_clusters"]
    assert clusters.filter(pl.col("kept")).select("record_id", "batch").rows() == [("aaaaaaaaaaaa:1", "b1")]
    assert result.tables["dedup_index"]["record_id"].to_list() == ["bbbbbbbbbbbb:3"]


def test_rerunning_a_batch_with_the_same_prior_is_idempotent() -> None:
    prior = Deduplicator().run(_near_pair(shared=100)).tables["dedup_index"]
    batch = frame(
        *(record(i, " ".join(words("w", 200 - i)), batch="b2", file="bbbbbbbbbbbb") for i in range(1, 6)),
        record(9, "fresh", batch="b2", file="bbbbbbbbbbbb"),
    )
    once = Deduplicator().run(batch, prior)
    twice = Deduplicator().run(batch, prior)
    # Re-materializing with the batch's own earlier index rows still in the store changes nothing either.
    with_own = Deduplicator().run(batch, pl.concat([prior, once.tables["dedup_index"]]))

    for other in (twice, with_own):
        assert other.kept.equals(once.kept)
        assert other.rejected.equals(once.rejected)
        assert other.counters == once.counters
        for name, table in once.tables.items():
            assert other.tables[name].equals(table), name


def test_a_prior_index_built_with_other_parameters_is_refused() -> None:
    prior = Deduplicator().run(frame(record(1, "x"))).tables["dedup_index"]
    other = Deduplicator(DedupConfig(minhash=MinHashConfig(seed=1)))
    with pytest.raises(ValueError, match="not comparable"):
        other.run(frame(record(1, "y", batch="b2")), prior)


def test_gsm8k_socratic_questions_are_all_exact_duplicates_of_the_main_test_set() -> None:
    def questions(name: str, batch: str, sha: str) -> pl.DataFrame:
        return (
            pl.read_ndjson(GSM8K / name)
            .with_row_index("line", offset=1)
            .select(
                pl.format(f"{sha}:{{}}", pl.col("line")).alias("record_id"),
                pl.lit(batch).alias("batch"),
                pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("question"))).alias("messages"),
                pl.col("line").cast(pl.Int64).alias("source_line"),
            )
        )

    main = Deduplicator().run(questions("test.jsonl", "gsm8k-test", "111111111111"))
    socratic = questions("test_socratic.jsonl", "gsm8k-socratic", "222222222222")
    result = Deduplicator().run(socratic, prior=main.tables["dedup_index"])

    result.check_conservation()
    assert result.kept.is_empty()
    assert result.rejected_by_rule == {"exact_duplicate": socratic.height}
    assert result.rejected["detail"].str.contains(r"^exact duplicate of 111111111111:\d+ ").all()
    assert result.rejected["detail"].str.ends_with("accepted in batch gsm8k-test").all()


# ----------------------------------------------------------------------------------------- scopes


def test_first_user_turn_scope_compares_only_the_first_user_turn() -> None:
    df = frame(
        record(1, "What is two plus two?", "4"),
        record(2, "what is two plus two", "Four, because two and two make four."),
        record(3, "What is three plus three?", "4"),
    )
    assert Deduplicator().run(df).rejected.is_empty()  # whole conversations differ
    result = Deduplicator(DedupConfig(scope="first_user_turn")).run(df)
    assert rule_of(result) == {"aaaaaaaaaaaa:2": "exact_duplicate"}


def test_assistant_response_scope_compares_only_the_answers() -> None:
    df = frame(record(1, "Say hi.", "Hello there, friend!"), record(2, "Greet me.", "hello there friend"))
    assert Deduplicator().run(df).rejected.is_empty()
    result = Deduplicator(DedupConfig(scope="assistant_response")).run(df)
    assert rule_of(result) == {"aaaaaaaaaaaa:2": "exact_duplicate"}


def test_any_turn_scope_matches_records_sharing_any_single_turn_but_not_a_system_prompt() -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    rows = [
        record(1, "Explain recursion.", "A function calling itself."),
        record(2, "Explain loops.", "A function calling itself!"),  # same answer as 1
        record(3, "Explain sets.", "Unordered collections."),  # same system prompt as the others only
    ]
    for row in rows:
        row["messages"] = [system, *row["messages"]]
    result = Deduplicator(DedupConfig(scope="any_turn")).run(frame(*rows))
    assert rule_of(result) == {"aaaaaaaaaaaa:2": "exact_duplicate"}
    assert "(an identical normalized turn" in detail_of(result)["aaaaaaaaaaaa:2"]
    index = result.tables["dedup_index"]
    assert index["turn_hashes"].list.len().to_list() == [2, 2]  # user and assistant turns, no system


def test_any_turn_scope_matches_a_turn_of_a_prior_batch() -> None:
    config = DedupConfig(scope="any_turn")
    prior = Deduplicator(config).run(frame(record(1, "Name a prime.", "Seven."))).tables["dedup_index"]
    later = frame(record(1, "Something else entirely.", "seven", batch="b2", file="bbbbbbbbbbbb"))
    result = Deduplicator(config).run(later, prior)
    assert detail_of(result)["bbbbbbbbbbbb:1"].endswith("; kept aaaaaaaaaaaa:1: accepted in batch b1")


def test_records_without_text_in_the_scope_are_kept_and_not_compared() -> None:
    no_user = {"role": "assistant", "content": "Unprompted."}
    rows = [record(1, "x"), record(2, "y")]
    for row in rows:
        row["messages"] = [no_user]
    result = Deduplicator(DedupConfig(scope="first_user_turn")).run(frame(*rows))
    assert result.rejected.is_empty()
    assert result.counters["no_scope_text"] == 2
    assert result.tables["dedup_index"]["exact_hash"].null_count() == 2


def test_gsm8k_test_and_socratic_collapse_to_one_copy_each_by_first_user_turn() -> None:
    """The socratic set repeats every test question with a differently worded answer."""
    test = read_file(GSM8K / "test.jsonl", "gsm8k-test", IngestConfig()).kept
    socratic = read_file(GSM8K / "test_socratic.jsonl", "gsm8k-socratic", IngestConfig()).kept
    config = DedupConfig(scope="first_user_turn")
    questions = dedup_texts(test, config.normalization, config.scope).n_unique()

    # As one batch: one copy of each question is left.
    both = Deduplicator(config).run(pl.concat([test, socratic]))
    both.check_conservation()
    assert both.kept.height == questions
    assert both.kept["batch"].unique().to_list() == ["gsm8k-test"]  # earliest (then record id) wins ties
    # As two batches: the second is entirely removed in favour of the accepted first.
    first = Deduplicator(config).run(test)
    second = Deduplicator(config).run(socratic, prior=first.tables["dedup_index"])
    assert first.kept.height == questions
    assert second.kept.is_empty()
    assert second.rejected_by_rule == {"exact_duplicate": socratic.height}
    assert second.rejected["detail"].str.ends_with("accepted in batch gsm8k-test").all()
    # By whole conversation (the default scope) nearly all are different records.
    assert Deduplicator().run(pl.concat([test, socratic])).kept.height > 1.9 * questions


# ------------------------------------------------------------------------------------ keep rules


def test_keep_longest_keeps_the_record_with_most_characters() -> None:
    base = " ".join(words("w", 200))
    df = frame(record(1, base, "ok"), record(2, base + " extra words at the end", "ok"))
    result = Deduplicator(DedupConfig(keep="longest")).run(df)
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:2"]
    assert detail_of(result)["aaaaaaaaaaaa:1"].endswith("; kept aaaaaaaaaaaa:2: longer")


def test_keep_quality_prefers_the_higher_quality_score_and_missing_scores_lose() -> None:
    rows = [record(1, "Same question?"), record(2, "same question"), record(3, "SAME QUESTION")]
    rows[1]["metadata"] = '{"quality_score": 0.9}'
    rows[2]["metadata"] = '{"quality_score": 0.4}'
    result = Deduplicator(DedupConfig(keep="quality")).run(frame(*rows))
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:2"]
    assert detail_of(result)["aaaaaaaaaaaa:1"].endswith("; kept aaaaaaaaaaaa:2: higher quality score")


def test_keep_quality_prefers_the_llm_judge_score_over_the_stated_one() -> None:
    rows = [record(1, "Same question?"), record(2, "same question"), record(3, "SAME QUESTION")]
    rows[1]["metadata"] = '{"quality_score": 0.9}'
    judged = pl.DataFrame({"record_id": ["aaaaaaaaaaaa:3", "aaaaaaaaaaaa:2"], "quality_score": [4.5, 2.0]})
    result = Deduplicator(DedupConfig(keep="quality")).run(frame(*rows), quality_scores=judged)
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:3"]
    assert detail_of(result)["aaaaaaaaaaaa:2"].endswith("; kept aaaaaaaaaaaa:3: higher quality score")


def test_keep_quality_ties_fall_back_to_earliest_and_say_so() -> None:
    rows = [record(2, "Same question?"), record(1, "same question")]
    for row in rows:
        row["metadata"] = '{"quality_score": 3}'
    result = Deduplicator(DedupConfig(keep="quality")).run(frame(*rows))
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:1"]
    assert detail_of(result)["aaaaaaaaaaaa:2"].endswith("; kept aaaaaaaaaaaa:1: earliest")


def test_keep_source_priority_uses_the_first_matching_glob() -> None:
    rows = [record(1, "Shared prompt"), record(2, "shared prompt"), record(3, "SHARED PROMPT")]
    rows[0]["source_file"] = "scraped/forum.jsonl"
    rows[1]["source_file"] = "curated/experts.jsonl"
    rows[2]["source_file"] = "vendor.csv"
    config = DedupConfig(keep="source_priority", source_priority=["curated/*", "*.csv"])
    result = Deduplicator(config).run(frame(*rows))
    assert result.kept["record_id"].to_list() == ["aaaaaaaaaaaa:2"]
    details = detail_of(result)
    assert details["aaaaaaaaaaaa:1"].endswith("; kept aaaaaaaaaaaa:2: higher source priority")
    assert details["aaaaaaaaaaaa:3"].endswith("; kept aaaaaaaaaaaa:2: higher source priority")


def test_a_prior_batchs_record_stays_kept_whatever_the_keep_rule() -> None:
    config = DedupConfig(keep="longest")
    prior = Deduplicator(config).run(frame(record(1, "short one"))).tables["dedup_index"]
    later = frame(
        record(1, "Short one!", "a much longer answer than before", batch="b2", file="bbbbbbbbbbbb")
    )
    result = Deduplicator(DedupConfig(keep="longest", scope="first_user_turn"))
    with pytest.raises(ValueError, match="not comparable"):  # another scope: other hashes
        result.run(later, prior)
    prior = (
        Deduplicator(DedupConfig(keep="longest", scope="first_user_turn"))
        .run(frame(record(1, "short one")))
        .tables["dedup_index"]
    )
    outcome = Deduplicator(DedupConfig(keep="longest", scope="first_user_turn")).run(later, prior)
    assert outcome.kept.is_empty()
    assert detail_of(outcome)["bbbbbbbbbbbb:1"].endswith("; kept aaaaaaaaaaaa:1: accepted in batch b1")


# ------------------------------------------------------------------------------------ clusters


def test_largest_clusters_lists_size_kept_record_and_lowest_similarity() -> None:
    df = pl.concat(
        [
            frame(record(1, "Hi"), record(2, "hi!"), record(3, "HI"), record(4, "Bye"), record(5, "bye")),
            _near_pair(shared=190).with_columns(
                pl.format("aaaaaaaaaaaa:{}", pl.col("source_line") + 10).alias("record_id"),
                (pl.col("source_line") + 10).alias("source_line"),
            ),
        ]
    )
    clusters = Deduplicator().run(df).tables["dedup_clusters"]
    top = largest_clusters(clusters, n=2)
    assert top.columns == ["cluster_id", "size", "kept_id", "min_similarity"]
    assert top.rows()[0] == ("aaaaaaaaaaaa:1", 3, "aaaaaaaaaaaa:1", 1.0)
    assert top["size"].to_list() == [3, 2]
    assert top["cluster_id"][1] == "aaaaaaaaaaaa:11"  # 2-member clusters by id: "...:11" < "...:4"
    assert 0.8 <= top["min_similarity"][1] < 1.0


# -------------------------------------------------------------------------------- minhash and lsh


def test_same_seed_same_signatures_and_another_seed_differs() -> None:
    texts = pl.Series(["the quick brown fox jumps over the lazy dog", "lorem ipsum dolor sit amet"])
    a = MinHasher(MinHashConfig(seed=42)).signatures(texts)
    b = MinHasher(MinHashConfig(seed=42)).signatures(texts)
    c = MinHasher(MinHashConfig(seed=43)).signatures(texts)
    assert a.shape == (2, 128) and a.dtype == np.uint32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_signatures_and_shingle_hashes_never_change() -> None:
    # Hard-coded: a change of tokenization, shingle hashing, seeding or densification shows up here,
    # and must come with a new HASH_VERSION because stored indexes would silently stop matching.
    hasher = MinHasher(MinHashConfig())
    text = pl.Series(["the quick brown fox jumps over the lazy dog"])
    assert hasher.shingle_hashes(text)[0].tolist() == SHINGLES
    assert hasher.signatures(text)[0, :6].tolist() == SIGNATURE


def test_a_signature_bin_holds_the_smallest_shingle_hash_falling_in_it() -> None:
    """One-permutation hashing: the 32-bit range is cut into num_perm bins; empty bins are filled
    from non-empty ones (densification), so every value is one of the text's shingle hashes."""
    config = MinHashConfig(num_perm=16)
    hasher = MinHasher(config)
    text = pl.Series([" ".join(words("t", 40))])
    shingles = hasher.shingle_hashes(text)[0].astype(np.uint64)
    signature = hasher.signatures(text)[0]
    bins = (shingles * 16) >> 32
    for b in range(16):
        inside = shingles[bins == b]
        if len(inside):
            assert signature[b] == inside.min()
        else:
            assert signature[b] in set(shingles.tolist())


def test_signatures_do_not_depend_on_how_texts_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = pl.Series([" ".join(words(f"t{k}_", 3 + 7 * k)) for k in range(9)] + [""])
    whole = MinHasher(MinHashConfig()).sketch(texts)
    monkeypatch.setattr("thresher.dedup._TEXT_CHUNK", 3)
    chunked = MinHasher(MinHashConfig()).sketch(texts)
    for x, y in zip(whole, chunked, strict=True):
        assert np.array_equal(x, y)
    one_by_one = np.concatenate([MinHasher(MinHashConfig()).signatures(texts.slice(i, 1)) for i in range(10)])
    assert np.array_equal(one_by_one, whole[2])


def test_shingle_hashes_follow_the_reference_shingle_sets() -> None:
    """Equal shingles hash equal and different ones differ, for words and characters (UTF-8 aware)."""
    texts = ["a b c d e a b c d e f", "x y", "é ü ñ é ü ñ", "ab ab ab"]
    for config in (MinHashConfig(ngram=3), MinHashConfig(shingle="char", ngram=2)):
        offsets, _, _ = MinHasher(config).sketch(pl.Series(texts))
        sizes = np.diff(offsets).tolist()
        assert sizes == [len(shingle_set(t, config)) for t in texts]


def test_pair_jaccard_is_the_true_jaccard_of_the_shingle_sets() -> None:
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words("v", 30), size=int(rng.integers(1, 60)))) for _ in range(40)]
    config = MinHashConfig(ngram=2)
    offsets, values, _ = MinHasher(config).sketch(pl.Series(texts))
    pairs = np.array(list(combinations(range(40), 2)))
    got = pair_jaccard(offsets, values, pairs)
    sets = [shingle_set(t, config) for t in texts]
    expected = [jaccard(sets[i], sets[j]) for i, j in pairs]
    assert np.allclose(got, expected)


def test_no_pair_below_the_threshold_is_removed_even_when_it_is_a_candidate() -> None:
    """Pairs at true Jaccard 0.70-0.79 often share an LSH bucket; their true Jaccard clears them."""
    rows = []
    for k, shared in enumerate(range(170, 180)):
        base = words(f"f{k}w", 200)
        rows.append(record(2 * k + 1, " ".join(base), "ok"))
        rows.append(record(2 * k + 2, " ".join(base[:shared] + words(f"f{k}x", 200 - shared)), "ok"))
    df = frame(*rows)
    sets = [shingle_set(t, MinHashConfig()) for t in normalized(df)]
    assert all(0.7 < jaccard(sets[i], sets[i + 1]) < 0.8 for i in range(0, len(sets), 2))
    result = Deduplicator().run(df)
    assert result.rejected.is_empty()
    assert result.counters["candidates_below_threshold"] >= 1


def test_lsh_parameters_match_datasketch() -> None:
    from datasketch.lsh import _optimal_param

    for threshold, num_perm in [(0.8, 128), (0.5, 64), (0.9, 256), (0.7, 100)]:
        bands, rows = lsh_params(threshold, num_perm)
        assert (bands, rows) == _optimal_param(threshold, num_perm, 0.5, 0.5)
        assert bands * rows <= num_perm


def test_jaccard_helper() -> None:
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    assert estimated_jaccard(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 0.5


def test_large_buckets_are_compared_within_a_window_not_all_pairs() -> None:
    keys = np.zeros((100, 1), dtype=np.uint64)  # one bucket of 100 records
    pairs = candidate_pairs(keys, np.arange(100), window=3)
    assert len(pairs) == 99 + 98 + 97
    assert len(candidate_pairs(keys, np.arange(100), window=200)) == 100 * 99 // 2


def test_recall_and_precision_against_brute_force_jaccard() -> None:
    """Families of variants at similarities spread over [0.3, 1] vs all-pairs true Jaccard."""
    rng = np.random.default_rng(0)
    config = MinHashConfig()
    texts = []
    for family in range(60):
        base = [f"f{family}w{i}" for i in range(int(rng.integers(60, 150)))]
        texts.append(" ".join(base))
        for rate in rng.choice([0.003, 0.01, 0.02, 0.04, 0.1], size=4):
            edited = np.where(rng.random(len(base)) < rate, "zz", base)
            texts.append(" ".join(edited))
    sets = [shingle_set(t, config) for t in texts]
    true_jaccard = {(i, j): jaccard(sets[i], sets[j]) for i, j in combinations(range(len(texts)), 2)}
    truth = {pair for pair, value in true_jaccard.items() if value >= config.threshold}
    clear = {pair for pair, value in true_jaccard.items() if value >= config.threshold + 0.05}

    found_pairs = near_duplicate_pairs(pl.Series(texts), config)
    found = set(found_pairs.select("i", "j").iter_rows())

    recall = len(found & truth) / len(truth)
    clear_recall = len(found & clear) / len(clear)
    print(f"\nnear-dup pairs: {len(truth)} true (J >= 0.8), {len(found)} found: recall {recall:.3f}")
    assert len(truth) > 100
    # Every reported pair is a true near duplicate: candidates are confirmed by their true Jaccard.
    assert found <= truth
    assert np.allclose(
        found_pairs["jaccard"], [true_jaccard[p] for p in found_pairs.select("i", "j").iter_rows()]
    )
    # Pairs just above the threshold are sometimes missed by LSH banding; clear cases are not.
    assert recall >= 0.9
    assert clear_recall >= 0.98


SHINGLES = [144054528, 2908945182, 1084247852, 1073939903, 794329858]
SIGNATURE = [1073939903, 1073939903, 1073939903, 144054528, 144054528, 794329858]
