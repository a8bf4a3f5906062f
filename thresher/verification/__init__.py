"""The verified stage: run code answers against their unit tests and check math answers.

A finetuning record that teaches a wrong program or a wrong sum is worse than no record, and both
can be checked mechanically: code by executing it (in ``thresher.sandbox``) against the tests that
came with it, math by comparing the final answer with the reference and by re-doing the GSM8K
calculator annotations ``<<expr=result>>``. Records that cannot be checked (chat, tool use, code
without tests) pass through with verdict "not_applicable", never rejected for lack of evidence.

Kept records gain ``verdict`` ("passed" / "not_applicable") and ``verdict_detail``; rejected ones
get a ledger row with a rule and a detail that names exception types, line numbers and numbers,
never record text.
"""

from thresher.verification.code import CodeVerifier, extract_code
from thresher.verification.math_answers import (
    MathVerifier,
    annotation_matches,
    equivalent,
    evaluate_arithmetic,
    final_answer,
    numeric_value,
)
from thresher.verification.outcomes import VERDICT_COLUMNS
from thresher.verification.stage import RULE_DESCRIPTIONS, Verifier, pass_rates

__all__ = [
    "RULE_DESCRIPTIONS",
    "VERDICT_COLUMNS",
    "CodeVerifier",
    "MathVerifier",
    "Verifier",
    "annotation_matches",
    "equivalent",
    "evaluate_arithmetic",
    "extract_code",
    "final_answer",
    "numeric_value",
    "pass_rates",
]
