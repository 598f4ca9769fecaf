"""Caption text: the cleaning applied to PEDES captions, and the clauses that make the
rounds of simulated text feedback, and the composed queries stage 2 may train on."""
from __future__ import annotations

import dataclasses
import random
import re

from model.token import compose_query

# The punctuation that the paper's code (after TBPS-CLIP) turns into spaces.
_STRIPPED = re.compile(r"[.!\"()*#:;~]")
_WHITESPACE_RUNS = re.compile(r"\s{2,}")
MAX_CAPTION_WORDS = 77


def pre_caption(text: str, max_words: int = MAX_CAPTION_WORDS) -> str:
    """Lower-case, replace . ! " ( ) * # : ; ~ by spaces, collapse runs of two or more
    whitespace characters into one space, trim spaces, keep the first ``max_words`` words.

    "A man in a red shirt. He carries a bag." -> "a man in a red shirt he carries a bag"
    """
    text = _WHITESPACE_RUNS.sub(" ", _STRIPPED.sub(" ", text.lower()))
    words = text.rstrip("\n").strip(" ").split(" ")
    return " ".join(words[:max_words])


_CLAUSE_OPENERS = frozenset(("he", "she", "they", "it", "the", "this", "his", "her", "their"))


def clause_pieces(text: str, min_words: int = 3) -> list:
    """Cut a feedback text into consecutive clauses, one per round of feedback, so that
    ``" ".join(pieces)`` is ``text`` with its whitespace collapsed.

    A piece ends after ``,`` ``;`` or ``.``. It is cut again before " with ", and before
    " and " when the next word opens a new clause (a pronoun or article, or a verb-like
    word ending in -s or -ing: "and holds a bag", "and she wears"), in both cases only
    when each side keeps at least ``min_words`` words. So "He has short hair and holds a
    red bag" gives two pieces while "a black and white striped shirt" stays whole.
    """
    pieces, current = [], []
    for word in text.split():
        current.append(word)
        if word[-1] in ",;.":
            pieces.extend(_cut_at_joins(current, min_words))
            current = []
    if current:
        pieces.extend(_cut_at_joins(current, min_words))
    return pieces


def _cut_at_joins(words: list, min_words: int) -> list:
    for position, word in enumerate(words):
        joiner = word.lower()
        after = words[position + 1:]
        if position < min_words or len(after) < min_words:
            continue
        following = after[0].lower()
        if joiner == "with" or (joiner == "and" and (following in _CLAUSE_OPENERS
                                                     or following.endswith(("s", "ing")))):
            return [" ".join(words[:position])] + _cut_at_joins(words[position:], min_words)
    return [" ".join(words)]


def feedback_rounds(text: str, rounds: int) -> list:
    """The feedback given after each of ``rounds`` rounds: round 0 is none, round r the
    first r clauses of ``text``; from the last clause on, the whole text."""
    pieces = clause_pieces(text)
    return [" ".join(pieces[:count]) for count in range(rounds + 1)]


@dataclasses.dataclass(frozen=True)
class FeedbackQuery:
    """A training sketch's feedback -> the text of its composed query, "a photo of * , and
    {feedback}" (``template``, ``sketch_prompt``: ``model.prompt``, ``model.sketch_prompt``).

    ``clauses``: ``all`` keeps the whole feedback; ``rounds`` keeps its first r clauses
    (``clause_pieces``), r drawn uniformly from 1 to all, so that training sees every
    round of feedback that ``test.rounds`` simulates.
    """

    template: str
    sketch_prompt: str
    clauses: str = "all"

    def __call__(self, feedback: str, rng: random.Random) -> str:
        if self.clauses == "rounds":
            pieces = clause_pieces(feedback)
            feedback = " ".join(pieces[:rng.randint(1, len(pieces))]) if pieces else ""
        return compose_query(self.template, feedback, self.sketch_prompt)
