"""The cleaned stage: formatting junk out, PII redacted, low-quality records rejected by named rules.

``Cleaner(config).run(records)`` runs three groups of small steps over the records' messages,
exploded into one row per message (``_row``, ``message_index``, ``role``, ``content``) so that every
step is a handful of Polars string expressions over a column:

1. Formatting (``HtmlToText``, ``ControlCharRemover``, ``WhitespaceNormalizer``). Text inside ```
   fences, and every message of a code task, is code: only control characters and the message's
   ends are touched there, so ``if a < b and c > d:`` and indentation survive.
2. PII (``PiiRedactor``): every entity type configured in ``clean.pii.entities`` is found with a
   regex, validated where a regex cannot decide (Luhn for card numbers, digit count for phones,
   octet ranges for IPv4) and replaced by a typed placeholder such as ``[EMAIL]``, or the record
   is rejected (``pii_drop``). Each redaction is recorded with the placeholder's character
   offsets in the cleaned text; the original value is never kept anywhere.
3. Quality (``QualityFilter``): named rules in a fixed order; the first that fires decides the
   ledger rule. Cheap rules run first, language identification last and only on survivors.

Counters (``StageResult.counters``):

- ``format.html_stripped`` / ``format.control_chars`` / ``format.whitespace``: messages changed
  by that step.
- ``pii.<entity>``: detections of that entity type (each one replaced by its placeholder, or, for
  entities configured as ``drop``, the reason the record was dropped).
- ``quality.<rule>``: records rejected by that rule (``pii_drop`` included);
  ``quality.language_checked``: texts that went through language identification.
"""

from thresher.cleaning.cleaner import Cleaner
from thresher.cleaning.langid import language_model
from thresher.cleaning.pii import luhn_valid, redact_preview

__all__ = ["Cleaner", "language_model", "luhn_valid", "redact_preview"]
