"""Prompt templates: package data, one folder per kind (an LLM recipe, the judge, code revision).

A kind's templates are loaded together as a ``PromptSet``, whose hash versions everything made with
them (a recipe's records, a judgment, a revision attempt).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class PromptSet:
    """The template files of one recipe kind, as shipped in ``thresher/prompts/<kind>/``."""

    kind: str
    texts: Mapping[str, str]  # file stem -> text

    @classmethod
    def load(cls, kind: str) -> PromptSet:
        folder = resources.files("thresher.prompts").joinpath(kind)
        texts = {
            entry.name.removesuffix(".txt"): entry.read_text(encoding="utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".txt")
        }
        return cls(kind, dict(sorted(texts.items())))

    @property
    def hash(self) -> str:
        digest = hashlib.sha256()
        for stem, text in sorted(self.texts.items()):
            digest.update(f"{stem}.txt\0{text}\0".encode())
        return digest.hexdigest()[:12]

    def require(self, slots: Mapping[str, frozenset[str]]) -> None:
        """Fail at configuration time, not mid-run, when a template is missing or its slots are wrong."""
        for stem, expected in slots.items():
            if stem not in self.texts:
                raise ValueError(f"prompt template {self.kind}/{stem}.txt is missing")
            try:
                found = {name for _, name, _, _ in string.Formatter().parse(self.texts[stem]) if name}
            except ValueError as exc:
                raise ValueError(f"prompt template {self.kind}/{stem}.txt: {exc} (write {{{{ }}}})") from None
            if found != expected:
                raise ValueError(
                    f"prompt template {self.kind}/{stem}.txt must use exactly the slots "
                    f"{sorted(expected)}, found {sorted(found)}"
                )

    def render(self, stem: str, **slots: object) -> str:
        return self.texts[stem].format_map(slots).strip()
