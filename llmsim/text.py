"""Pseudo-natural reply text, a pure function of its seed material.

A reply reads ``Re: <first words of the last user message>. <sentences…>`` so a test can
tell which prompt an answer belongs to, while the sentences after it change with the
seed, the model and the whole conversation.
"""

from __future__ import annotations

import random

from llmsim.tokens import count_tokens

ECHO_WORDS = 6
"""How many leading words of the last user message a reply echoes."""

_WORDS = """
    the a an of to and in on for with by from as at into over under about between through
    system model workflow task result value record batch queue worker signal state retry
    request response token budget cost latency window context prompt answer summary report
    document section detail figure table chart metric trend growth decline revenue margin
    customer market product service team plan goal risk issue change update review step
    process pipeline stage event schedule deadline quarter region policy contract payment
    data source field column index query cache store file message channel stream buffer
    clear simple robust durable careful precise brief detailed useful stable steady quick
    early late recent current previous next final initial main key common typical overall
    strong weak high low large small new old important relevant reliable consistent
    shows suggests indicates confirms explains describes covers includes requires allows
    improves reduces increases supports handles returns keeps tracks measures compares
    should could would may might will can must often usually rarely always never also
    however therefore meanwhile overall instead further still again already only even
    this that these those each every several many few most some other such both either
    we they it one two three four five ten twenty hundred first second third last
    """
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())

_CONNECTIVES = ("however", "therefore", "meanwhile", "overall", "instead", "further")


def echo_prefix(last_user_text: str) -> str:
    """``"Re: <first words>. "`` for the last user message, or ``""`` when it has no words."""
    words = last_user_text.split()[:ECHO_WORDS]
    if not words:
        return ""
    head = " ".join(words).rstrip(".,;:!?")
    return f"Re: {head}. " if head else ""


def sentence(rng: random.Random) -> str:
    n = rng.randint(6, 14)
    words = [rng.choice(VOCABULARY) for _ in range(n)]
    if rng.random() < 0.2:
        words[0] = rng.choice(_CONNECTIVES) + ","
    if n > 8 and rng.random() < 0.35:
        comma_at = rng.randint(3, n - 3)
        words[comma_at] += ","
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def phrase(rng: random.Random, min_words: int = 2, max_words: int = 5) -> str:
    """A few words without punctuation, for string values in generated JSON."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(min_words, max_words)))


def generate_reply(rng: random.Random, last_user_text: str, target_tokens: int) -> str:
    """Echo prefix plus whole sentences until at least ``target_tokens`` tokens."""
    parts = [echo_prefix(last_user_text).rstrip()]
    total = count_tokens(parts[0])
    while total < target_tokens:
        s = sentence(rng)
        parts.append(s)
        total += count_tokens(s)
    return " ".join(p for p in parts if p)
