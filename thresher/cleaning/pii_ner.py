"""Person names from a spaCy NER pipeline, run only on the messages a narrow prefilter selects.

Optional (``clean.pii.ner_model``): even restricted to its NER component, a small CNN pipeline reads
about 1,000-1,500 short texts/s on one core, far below the rules, so it only sees messages with a
capitalized word that is neither the first of a sentence nor a common capitalized word ("I",
weekdays, months, "The"). The redactor runs it after every other entity type, on text in which
their matches are already placeholders, so a name inside an address is not taken from it.
"""

from __future__ import annotations

import re

import polars as pl

# Weekdays and months: capitalized, and never a person's name here.
CALENDAR_WORDS = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
# Capitalized words that are no evidence of a name: the pronoun, weekdays, months, and the
# determiners and pronouns that start many sentences after a colon or a quote.
STOP_WORDS = [
    "I",
    "I'm",
    "I've",
    "I'd",
    "I'll",
    *CALENDAR_WORDS,
    "The",
    "A",
    "An",
    "This",
    "That",
    "These",
    "Those",
    "It",
    "He",
    "She",
    "We",
    "You",
    "They",
    "My",
    "Our",
    "Your",
    "His",
    "Her",
    "Their",
    "If",
    "When",
    "What",
    "Why",
    "How",
    "Yes",
    "No",
    "Please",
    "Thanks",
]
_STOP = r"\b(?:" + "|".join(STOP_WORDS) + r")\b"
# A capitalized word after a lowercase word, a digit or a comma (not a sentence start), or after
# another capitalized word (a full name opening a sentence or a line).
_MID_SENTENCE = r"(?:[\p{Ll}\p{N},;:)]|\p{Lu}\p{Ll}+) \p{Lu}\p{Ll}"
BATCH_SIZE = 512
_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_NOT_NAME_CHAR = re.compile(r"[0-9_()\[\]{}=<>/\\|@#$%^&*+~`;:]")
# fmt: off
NOT_PERSON_ENDS = frozenset([
    "Inc", "Inc.", "Ltd", "Ltd.", "LLC", "Group", "Systems", "Orchestra", "Band", "Company", "Corporation",
    "Incorporated", "Foundation", "University", "College", "Institute", "Partners", "Associates", "Street",
    "Road", "Avenue", "Strasse", "Straße",
])
# fmt: on


def candidates(content: pl.Expr) -> pl.Expr:
    """Messages the model reads: a capitalized word mid-sentence once the stop words are gone."""
    return content.str.contains(_MID_SENTENCE) & content.str.replace_all(_STOP, "x").str.contains(
        _MID_SENTENCE
    )


def _package(model: str) -> str:
    return model.replace("_", "-")


class NerPersons:
    """PERSON spans from the pipeline's NER component (and the embedding layer it listens to, if any)."""

    def __init__(self, model: str) -> None:
        try:
            import spacy
        except ImportError as error:  # pragma: no cover - spaCy is a dependency of the model packages
            raise ImportError(
                f"clean.pii.ner_model {model!r} needs spaCy: pip install spacy {_package(model)}"
            ) from error
        try:
            nlp = spacy.load(model)
        except OSError as error:
            raise ValueError(
                f"clean.pii.ner_model: spaCy pipeline {model!r} is not installed; install the package "
                f"(pip install {_package(model)}) or set ner_model: null"
            ) from error
        if "ner" not in nlp.pipe_names:
            raise ValueError(f"clean.pii.ner_model: pipeline {model!r} has no 'ner' component")
        # Small pipelines give NER its own embedding; larger ones share a tok2vec/transformer.
        listens = "Listener" in str(nlp.config["components"]["ner"]["model"].get("tok2vec", {}))
        shared = [name for name in ("tok2vec", "transformer") if listens and name in nlp.pipe_names]
        nlp.select_pipes(enable=[*shared, "ner"])
        self.nlp = nlp

    def persons(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """(start, end) character offsets of every PERSON entity of each text.

        Fenced code is blanked out before the model reads the text (same length, so offsets hold):
        identifiers are not names. Spans with a digit or a code character, or ending in a word that
        names a group or a thing ("Hall Orchestra", "Careset Systems"), are a small model's usual
        confusions with identifiers, organizations and streets.
        """
        prose = [_FENCED.sub(lambda m: " " * len(m.group()), t) if "```" in t else t for t in texts]
        return [
            [
                (e.start_char, e.end_char)
                for e in doc.ents
                if e.label_ == "PERSON"
                and not _NOT_NAME_CHAR.search(e.text)
                and e[-1].text not in NOT_PERSON_ENDS
            ]
            for doc in self.nlp.pipe(prose, batch_size=BATCH_SIZE)
        ]
