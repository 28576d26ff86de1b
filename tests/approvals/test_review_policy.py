"""When DocumentReview asks a person: the policy's decision, case by case."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.approvals import ApprovalMode, ReviewPolicy
from workflows.document_review import SelfCheck, approval_reason, parse_self_check


def check(confidence: float, *flags: str) -> SelfCheck:
    return SelfCheck(confidence=confidence, policy_flags=list(flags))


@pytest.mark.parametrize(
    ("policy", "self_check", "draw", "expected"),
    [
        (
            ReviewPolicy(mode=ApprovalMode.ALWAYS),
            check(0.99),
            0.5,
            "policy: every draft is reviewed",
        ),
        (ReviewPolicy(), check(0.79), 0.5, "low confidence: 0.79 below 0.80"),
        (ReviewPolicy(), check(0.80), 0.5, None),
        (
            ReviewPolicy(confidence_threshold=0.9),
            check(0.85),
            0.0,
            "low confidence: 0.85 below 0.90",
        ),
        (
            ReviewPolicy(),
            check(0.99, "personal_data"),
            0.5,
            "policy rule: the self-check flagged personal_data",
        ),
        (
            ReviewPolicy(mode=ApprovalMode.SAMPLE, sample_percent=10),
            check(0.1),
            0.05,
            "QA sample: 10% of drafts are reviewed",
        ),
        (ReviewPolicy(mode=ApprovalMode.SAMPLE, sample_percent=10), check(0.1), 0.10, None),
        (ReviewPolicy(mode=ApprovalMode.SAMPLE, sample_percent=0), check(0.0), 0.0, None),
        (
            ReviewPolicy(mode=ApprovalMode.SAMPLE, sample_percent=100),
            check(1.0),
            0.999,
            "QA sample: 100% of drafts are reviewed",
        ),
    ],
)
def test_approval_reason(
    policy: ReviewPolicy, self_check: SelfCheck, draw: float, expected: str | None
) -> None:
    assert approval_reason(policy, self_check, draw) == expected


def test_an_unreadable_self_check_is_a_red_flag() -> None:
    for text in ("not json", '{"confidence": 2}', "[]"):
        parsed = parse_self_check(text)
        assert parsed.confidence == 0 and parsed.policy_flags == ["self_check_unreadable"]
    good = parse_self_check('{"confidence": 0.9, "policy_flags": ["legal_claim"], "issues": "x"}')
    assert good == SelfCheck(confidence=0.9, policy_flags=["legal_claim"], issues="x")


def test_a_policy_whose_escalation_comes_after_its_deadline_is_refused() -> None:
    with pytest.raises(ValidationError, match="before its deadline"):
        ReviewPolicy.model_validate(
            {"deadline": 3600, "escalation": [{"role": "x", "after": 7200}]}
        )
