"""The cleaned stage: formatting junk repaired, PII replaced, low-quality records rejected by named rules.

``Cleaner(config).run(records)`` (``cleaner.py``) runs three groups of small steps over the records'
messages, exploded into one row per message (``_row``, ``message_index``, ``role``, ``content``;
``batch.py``) so that every step is a handful of Polars expressions over a column, with per-row
Python only on the rare rows a vectorized mask selects:

1. Formatting (``junk.py``, ``html.py``): HTML to structured text (or a page's main content),
   special tokens, mojibake, markdown artifacts, control characters, whitespace. Fenced code and
   code tasks are only touched where a model must never see the text as it is.
2. PII (``pii.py``, ``pseudonym.py``, ``pii_ner.py``): validated patterns (and optionally spaCy NER
   for person names), each detection replaced per its entity's action (placeholder, keyed pseudonym,
   keyed hash) or the record dropped (``pii_drop``). Redactions are recorded as entity and offsets of
   the replacement in the cleaned text; the original value is kept nowhere.
3. Quality (``rules.py``, ``langid.py``): named rules in a fixed order, cheap first, language
   identification last; the first rule that fires decides the ledger rule and its detail, which
   never quotes record text.

Counters (``StageResult.counters``): ``format.<step>`` (messages changed by that step),
``pii.<entity>`` (detections), ``quality.<rule>`` (records rejected), ``quality.language_checked``.
"""

from thresher.cleaning.cleaner import Cleaner
from thresher.cleaning.langid import language_model
from thresher.cleaning.pii import luhn_valid, redact_preview

__all__ = ["Cleaner", "language_model", "luhn_valid", "redact_preview"]
