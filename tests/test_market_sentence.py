"""market_sketch.feedback_sentence: the one-sentence Market-1501 attribute feedback of the
InteractReID reference code (``get_textInput`` in ``misc/caption_dataset.py``).

Every expected sentence below is a literal worked out by hand from the reference's rules,
not computed by code: the sentence is the words "A"/"An" (An for ages 3 and 4), the age
and gender noun, "with <hair length> hair.", the pronoun, "is in <upper colours> <sleeve
length> sleeve clothes, and wears <lower colours> <lower length> <dress or pants>" joined
by single spaces, then " with " and the carried things (hat, backpack, bag, handbag, in
that order, joined with " and ") and a full stop, or just a full stop when none is
carried. Colours are listed in the annotation's order and joined with " and ". Words that
come out empty (no colour, a 0 value) leave runs of spaces that the reference folds back
to one, so the 0-valued cases pin that folding.

Market-1501 coding: yes/no attributes 1 = no, 2 = yes; gender 1 man, 2 woman; hair 1
short, 2 long; up (sleeves) 1 long, 2 short; down 1 long, 2 short; clothes 1 dress,
2 pants; age 1 young, 2 teenager, 3 adult, 4 old.
"""
from __future__ import annotations

import pytest

from datasets import market_sketch

UP_COLOURS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
DOWN_COLOURS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
ACCESSORIES = ("hat", "backpack", "bag", "handbag")


def attrs(gender, age, hair, up, down, clothes, *, up_colours=(), down_colours=(),
          carried=()):
    """All 27 Market fields: every colour and accessory 1 (no), then the given ones 2 (yes)."""
    values = {field: 1 for field in ACCESSORIES}
    values.update({"up" + colour: 1 for colour in UP_COLOURS})
    values.update({"down" + colour: 1 for colour in DOWN_COLOURS})
    values.update(gender=gender, age=age, hair=hair, up=up, down=down, clothes=clothes)
    for colour in up_colours:
        assert colour in UP_COLOURS, colour
        values["up" + colour] = 2
    for colour in down_colours:
        assert colour in DOWN_COLOURS, colour
        values["down" + colour] = 2
    for thing in carried:
        assert thing in ACCESSORIES, thing
        values[thing] = 2
    assert len(values) == 27
    return values


CASES = [
    pytest.param(
        attrs(1, 2, 1, 2, 1, 2, up_colours=["black"], down_colours=["blue"],
              carried=["backpack"]),
        "A teenager man with short hair. He is in black short sleeve clothes, and wears "
        "blue long pants with a backpack.",
        id="paper-example"),
    pytest.param(
        attrs(2, 1, 2, 1, 2, 1),
        "A young woman with long hair. She is in long sleeve clothes, and wears short dress.",
        id="young-woman-no-colours-no-accessory"),
    pytest.param(
        attrs(1, 3, 1, 1, 1, 2, up_colours=["white"], down_colours=["black"]),
        "An adult man with short hair. He is in white long sleeve clothes, and wears black "
        "long pants.",
        id="adult-man-An"),
    pytest.param(
        attrs(2, 4, 2, 2, 2, 2, up_colours=["blue", "red", "yellow"],
              down_colours=["pink", "white"], carried=["bag", "hat"]),
        "An old woman with long hair. She is in red and yellow and blue short sleeve "
        "clothes, and wears white and pink short pants with a hat and a bag.",
        id="old-woman-An-three-up-two-down-colours-two-accessories"),
    pytest.param(
        attrs(1, 3, 1, 1, 1, 2, carried=["handbag", "bag", "backpack", "hat"]),
        "An adult man with short hair. He is in long sleeve clothes, and wears long pants "
        "with a hat and a backpack and a bag and a handbag.",
        id="all-four-accessories-in-order"),
    pytest.param(
        attrs(2, 2, 2, 2, 1, 1, up_colours=["purple"], down_colours=["purple"],
              carried=["handbag"]),
        "A teenager woman with long hair. She is in purple short sleeve clothes, and wears "
        "purple long dress with a handbag.",
        id="teenager-woman-long-dress-handbag"),
    pytest.param(
        attrs(1, 1, 1, 2, 2, 2, up_colours=["black", "white"], down_colours=["gray"]),
        "A young man with short hair. He is in black and white short sleeve clothes, and "
        "wears gray short pants.",
        id="young-man-two-up-colours-short-pants"),
    pytest.param(
        attrs(2, 3, 1, 1, 1, 2, up_colours=["green", "gray"], down_colours=["brown", "green"],
              carried=["backpack", "handbag"]),
        "An adult woman with short hair. She is in gray and green long sleeve clothes, and "
        "wears green and brown long pants with a backpack and a handbag.",
        id="adult-woman-two-down-colours"),
    pytest.param(
        attrs(1, 2, 2, 2, 1, 2, up_colours=UP_COLOURS, down_colours=DOWN_COLOURS),
        "A teenager man with long hair. He is in black and white and red and purple and "
        "yellow and gray and blue and green short sleeve clothes, and wears black and white "
        "and pink and purple and yellow and gray and blue and green and brown long pants.",
        id="every-colour"),
    pytest.param(
        attrs(2, 2, 2, 1, 2, 1, down_colours=["yellow", "blue"], carried=["hat"]),
        "A teenager woman with long hair. She is in long sleeve clothes, and wears yellow "
        "and blue short dress with a hat.",
        id="no-up-colour-two-down-colours-short-dress-hat"),
    pytest.param(
        attrs(1, 4, 1, 1, 1, 2, up_colours=["gray"], down_colours=["gray"],
              carried=["backpack", "hat"]),
        "An old man with short hair. He is in gray long sleeve clothes, and wears gray long "
        "pants with a hat and a backpack.",
        id="old-man-An-hat-backpack"),
    pytest.param(
        attrs(2, 1, 1, 2, 2, 2, up_colours=["green"], down_colours=["pink"],
              carried=["handbag", "bag"]),
        "A young woman with short hair. She is in green short sleeve clothes, and wears "
        "pink short pants with a bag and a handbag.",
        id="young-woman-short-hair-bag-handbag"),
    pytest.param(
        attrs(2, 4, 1, 2, 1, 1, up_colours=["white"], carried=["bag", "backpack"]),
        "An old woman with short hair. She is in white short sleeve clothes, and wears long "
        "dress with a backpack and a bag.",
        id="old-woman-no-down-colour-long-dress"),
    pytest.param(
        attrs(1, 1, 2, 1, 2, 2, carried=["bag", "hat", "backpack"]),
        "A young man with long hair. He is in long sleeve clothes, and wears short pants "
        "with a hat and a backpack and a bag.",
        id="three-accessories-in-order"),
    pytest.param(
        attrs(0, 0, 1, 2, 1, 2, up_colours=["blue"], down_colours=["black"], carried=["bag"]),
        "A person with short hair. He or she is in blue short sleeve clothes, and wears "
        "black long pants with a bag.",
        id="gender-0-age-0"),
    pytest.param(
        attrs(0, 3, 2, 1, 1, 1),
        "An adult person with long hair. He or she is in long sleeve clothes, and wears "
        "long dress.",
        id="gender-0-adult"),
    pytest.param(
        attrs(2, 0, 1, 1, 1, 2, up_colours=["red"]),
        "A woman with short hair. She is in red long sleeve clothes, and wears long pants.",
        id="woman-age-0"),
    pytest.param(
        attrs(0, 0, 0, 0, 0, 0),
        "A person with hair. He or she is in sleeve clothes, and wears clothes.",
        id="all-list-indexed-values-0"),
]


@pytest.mark.parametrize("attributes, expected", CASES)
def test_feedback_sentence_matches_reference(attributes, expected):
    before = dict(attributes)
    assert market_sketch.feedback_sentence(attributes) == expected
    assert attributes == before  # the caller's dict is left as it was
