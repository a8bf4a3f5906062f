"""Specification of the deduped stage (thresher.dedup)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
import pytest

from tests.conftest import CORPORA
from thresher.config import DedupConfig, MinHashConfig, NormalizationConfig
from thresher.dedup import (
    CLUSTER_SCHEMA,
    INDEX_SCHEMA,
    Deduplicator,
    MinHasher,
    band_keys,
    candidate_pairs,
    dedup_texts,
    earliest_first,
    estimated_jaccard,
    exact_hashes,
    jaccard,
    lsh_params,
    normalize,
    shingle_set,
)
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
    assert detail.startswith("near duplicate of aaaaaaaaaaaa:1 (estimated Jaccard 0.")
    assert detail.endswith("); kept aaaaaaaaaaaa:1: earliest")
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
    assert "(estimated Jaccard 1.00)" in detail_of(result)["aaaaaaaaaaaa:2"]


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
    assert ", itself a near duplicate of aaaaaaaaaaaa:1 (estimated Jaccard 0." in detail
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
    assert details["bbbbbbbbbbbb:2"].startswith("near duplicate of aaaaaaaaaaaa:1 (estimated Jaccard 0.9")
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


# -------------------------------------------------------------------------------- minhash and lsh


def test_same_seed_same_signatures_and_another_seed_differs() -> None:
    texts = pl.Series(["the quick brown fox jumps over the lazy dog", "lorem ipsum dolor sit amet"])
    a = MinHasher(MinHashConfig(seed=42)).signatures(texts)
    b = MinHasher(MinHashConfig(seed=42)).signatures(texts)
    c = MinHasher(MinHashConfig(seed=43)).signatures(texts)
    assert a.shape == (2, 128) and a.dtype == np.uint64
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_signatures_never_change() -> None:
    # Hard-coded: a change of tokenization, shingle hashing, seeding or permutation shows up here,
    # and must come with a new HASH_VERSION because stored indexes would silently stop matching.
    signature = MinHasher(MinHashConfig()).signatures(
        pl.Series(["the quick brown fox jumps over the lazy dog"])
    )
    assert signature[0, :4].tolist() == [
        47917894577789343,
        222589010662574663,
        24760284337050284,
        1219065098081727065,
    ]


def test_signatures_do_not_depend_on_how_texts_and_shingles_are_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = pl.Series([" ".join(words(f"t{k}_", 3 + 7 * k)) for k in range(9)] + [""])
    whole = MinHasher(MinHashConfig()).signatures(texts)
    monkeypatch.setattr("thresher.dedup._TEXT_CHUNK", 3)
    monkeypatch.setattr("thresher.dedup._PERMUTE_BLOCK", 5)
    assert np.array_equal(MinHasher(MinHashConfig()).signatures(texts), whole)
    one_by_one = np.concatenate([MinHasher(MinHashConfig()).signatures(texts.slice(i, 1)) for i in range(10)])
    assert np.array_equal(one_by_one, whole)


def test_permutations_are_the_textbook_universal_hash_mod_mersenne_61() -> None:
    hasher = MinHasher(MinHashConfig(num_perm=16))
    h = np.array([0, 1, 12345, 2**32 - 1], dtype=np.uint64)
    got = hasher.permute(h)
    p = (1 << 61) - 1
    expected = [[(int(a) * int(x) + int(b)) % p for x in h] for a, b in zip(hasher.a, hasher.b, strict=True)]
    assert got.tolist() == expected


def test_lsh_parameters_match_datasketch() -> None:
    from datasketch.lsh import _optimal_param

    for threshold, num_perm in [(0.8, 128), (0.5, 64), (0.9, 256), (0.7, 100)]:
        bands, rows = lsh_params(threshold, num_perm)
        assert (bands, rows) == _optimal_param(threshold, num_perm, 0.5, 0.5)
        assert bands * rows <= num_perm


def test_jaccard_helper() -> None:
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0


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

    signatures = MinHasher(config).signatures(pl.Series(texts))
    keys = band_keys(signatures, *lsh_params(config.threshold, config.num_perm))
    pairs = candidate_pairs(keys, np.arange(len(texts)), config.bucket_window)
    found_mask = estimated_jaccard(signatures[pairs[:, 0]], signatures[pairs[:, 1]]) >= config.threshold
    found = {(int(i), int(j)) for i, j in pairs[found_mask]}

    recall = len(found & truth) / len(truth)
    clear_recall = len(found & clear) / len(clear)
    precision = len(found & truth) / len(found)
    print(
        f"\nnear-dup pairs: {len(truth)} true (J >= 0.8), {len(found)} found: recall {recall:.3f} "
        f"(J >= 0.85: {clear_recall:.3f}), precision {precision:.3f}"
    )
    assert len(truth) > 100
    # Pairs just above the threshold are missed by LSH banding or by estimation noise (std ~0.03 at
    # 128 permutations) about as often as pairs just below it are caught; clear cases are not.
    assert recall >= 0.8
    assert clear_recall >= 0.95
    assert precision >= 0.95
    assert min(true_jaccard[pair] for pair in found) >= config.threshold - 0.1
