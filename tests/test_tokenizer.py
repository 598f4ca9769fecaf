"""Tests for model/tokenizer.py.

Parity tests compare against the tokenizer of the `openai-clip` package. Its
``simple_tokenizer.py`` is loaded straight from its file, because importing
the ``clip`` package runs ``clip/clip.py``, which needs ``pkg_resources``.
"""

import random

import pytest
import torch

from model.tokenizer import (
    DEFAULT_MERGES_PATH,
    PLACEHOLDER,
    SimpleTokenizer,
    clean_text,
    default_tokenizer,
    placeholder_token_id,
    tokenize,
)
from tests.peers import load_peer_file

# --------------------------------------------------------------------------
# Reference tokenizer
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peer():
    """openai-clip's SimpleTokenizer (skipped, or failed under CI, when it is missing)."""
    return load_peer_file("clip", "simple_tokenizer.py").SimpleTokenizer()


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _peer_tokenize(peer, texts, context_length):
    """The reference padding rule: [sot] + ids + [eot], zero padded; when too
    long, cut to context_length and overwrite the last id with eot."""
    sot = peer.encoder["<|startoftext|>"]
    eot = peer.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [sot] + peer.encode(text) + [eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = eot
        out[row, : len(ids)] = torch.tensor(ids)
    return out


# --------------------------------------------------------------------------
# Caption generation
# --------------------------------------------------------------------------

COLOURS = ["red", "blue", "dark-blue", "light grey", "BLACK", "white", "navy",
           "khaki", "beige", "olive-green", "pink", "purple", "Orange", "brown",
           "multi-coloured", "off-white", "turquoise", "maroon"]
GARMENTS = ["t-shirt", "T-Shirt", "jacket", "hoodie", "down coat", "jeans",
            "shorts", "skirt", "dress", "sweater", "cardigan", "blazer",
            "long-sleeved shirt", "polo shirt", "trousers", "leggings",
            "sneakers", "boots", "high heels", "sandals", "cap", "beanie",
            "scarf", "glasses", "sunglasses", "mask", "vest"]
BAGS = ["backpack", "handbag", "shoulder bag", "tote bag", "suitcase",
        "plastic bag", "messenger bag", "umbrella", "phone", "bottle of water"]
SUBJECTS = ["a man", "a woman", "the pedestrian", "A YOUNG MAN", "an old lady",
            "she's", "he's", "they're", "the girl", "a boy", "this person",
            "The Person", "a middle-aged man", "someone"]
VERBS = ["wears", "is wearing", "carries", "holds", "is holding",
         "walks with", "doesn't carry", "isn't wearing", "has", "I'm sure has",
         "we've seen with", "she'll carry", "he'd hold", "won't drop"]
EXTRAS = ["café", "naïve", "résumé", "Zoë", "jalapeño", "straße", "ÉLAN",
          "😀", "👜", "👟👟", "🇯🇵", "👩‍👧", "行人", "穿着红色外套的女人", "背包",
          "빨간", "красная куртка", "Ωμέγα", "مرحبا", "&amp;", "&quot;hi&quot;",
          "&lt;tag&gt;", "&#39;", "&amp;amp;", "&nbsp;", "1990s", "3.5", "$20",
          "50%", "No.7", "24/7", "#42", "e-mail", "C++", "!!!", "?!", "...",
          "--", "(left)", "[right]", "{x}", "\"quoted\"", "she’s", "“curly”",
          "½", "²", "Ⅻ", "ﬁne", "ＦＵＬＬ", "Ã©", "\u00ad", "tab\there",
          "new\nline", "  spaced   out  "]
JOINERS = [" and ", ", ", "; ", " with ", " - ", " & ", ". ", "   ", "\t", " / "]


def _caption(rng):
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), "a",
             rng.choice(COLOURS), rng.choice(GARMENTS)]
    for _ in range(rng.randint(0, 4)):
        parts.append(rng.choice(JOINERS).strip() or " ")
        parts.append(rng.choice([rng.choice(COLOURS) + " " + rng.choice(GARMENTS),
                                 rng.choice(BAGS), rng.choice(EXTRAS),
                                 str(rng.randint(0, 10 ** rng.randint(1, 6)))]))
    text = " ".join(parts)
    style = rng.random()
    if style < 0.1:
        text = text.upper()
    elif style < 0.2:
        text = text.title()
    if rng.random() < 0.3:
        text += rng.choice([".", "!", "?", " .", "...", " :)"])
    if rng.random() < 0.1:
        text = "  " + text + "  \n"
    return text


def _long_caption(rng, n_words):
    pool = COLOURS + GARMENTS + BAGS + EXTRAS[:20]
    return " ".join(rng.choice(pool) for _ in range(n_words))


def _generated_captions():
    rng = random.Random(20240229)
    captions = [_caption(rng) for _ in range(300)]
    captions += [_long_caption(rng, rng.randint(60, 200)) for _ in range(20)]
    return captions


GENERATED = _generated_captions()

EDGE_CASES = [
    "", " ", "\n\t ", "*", "a", "A", "I", "'s", "she's", "SHE'S", "o'clock",
    "rock'n'roll", "aaaaaaaaaaaaaaaaaaaa", "ooo", "   multiple     spaces   ",
    "1234567890", "3.14159", "x" * 300, "café naïve", "CAFÉ", "😀😀😀",
    "行人穿着蓝色牛仔裤", "&amp;amp;amp;", "&quot;&quot;", "&lt;b&gt;bold&lt;/b&gt;",
    "<|startoftext|>", "a <|endoftext|> b", "\u200b", "\x00\x01\x7f",
    "a photo of * , and she carries a red bag", "a*b", "**", "*.",
]


# --------------------------------------------------------------------------
# Parity with the reference tokenizer
# --------------------------------------------------------------------------

def test_generated_captions_are_varied():
    assert len(GENERATED) >= 300
    assert len(set(GENERATED)) > 250
    assert max(len(c.split()) for c in GENERATED) >= 100


def test_vocabulary_matches_peer(tok, peer):
    assert tok.vocab_size == 49408 == len(peer.encoder)
    assert tok.token_to_id == peer.encoder
    assert tok.sot_token_id == peer.encoder["<|startoftext|>"] == 49406
    assert tok.eot_token_id == peer.encoder["<|endoftext|>"] == 49407


def test_encode_matches_peer_on_generated_captions(tok, peer):
    mismatches = [c for c in GENERATED if tok.encode(c) != peer.encode(c)]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]!r}"


@pytest.mark.parametrize("text", EDGE_CASES)
def test_encode_matches_peer_on_edge_cases(tok, peer, text):
    assert tok.encode(text) == peer.encode(text)


def test_decode_matches_peer(tok, peer):
    for caption in GENERATED[:100] + EDGE_CASES:
        ids = peer.encode(caption)
        assert tok.decode(ids) == peer.decode(ids)


def test_explicit_merges_path_gives_same_ids(tok):
    other = SimpleTokenizer(DEFAULT_MERGES_PATH)
    for caption in GENERATED[:20]:
        assert other.encode(caption) == tok.encode(caption)


def test_missing_merges_file_raises(tmp_path):
    with pytest.raises(OSError):
        SimpleTokenizer(str(tmp_path / "missing.txt.gz"))


# --------------------------------------------------------------------------
# tokenize
# --------------------------------------------------------------------------

def test_tokenize_matches_peer_for_short_texts(peer):
    texts = [c for c in GENERATED if len(peer.encode(c)) <= 75][:100]
    assert len(texts) >= 50
    got = tokenize(texts)
    assert got.dtype == torch.long
    assert got.shape == (len(texts), 77)
    assert torch.equal(got, _peer_tokenize(peer, texts, 77))


@pytest.mark.parametrize("context_length", [16, 77, 100])
def test_tokenize_cuts_long_text_keeping_eot_last(tok, peer, context_length):
    rng = random.Random(context_length)
    text = _long_caption(rng, 150)
    ids = tok.encode(text)
    assert len(ids) > context_length

    got = tokenize([text, "a red bag"], context_length=context_length)
    assert got.shape == (2, context_length)
    row = got[0].tolist()
    assert row[0] == tok.sot_token_id
    assert row[-1] == tok.eot_token_id
    assert row[1:-1] == ids[: context_length - 2]
    assert 0 not in row
    assert torch.equal(got, _peer_tokenize(peer, [text, "a red bag"], context_length))


def test_tokenize_empty_string(tok):
    got = tokenize([""])
    assert got.shape == (1, 77)
    assert got[0, :2].tolist() == [tok.sot_token_id, tok.eot_token_id]
    assert not got[0, 2:].any()


def test_tokenize_single_string_gives_one_row(tok):
    got = tokenize("a woman in a blue dress")
    assert got.shape == (1, 77)
    assert torch.equal(got, tokenize(["a woman in a blue dress"]))
    n = len(tok.encode("a woman in a blue dress")) + 2
    assert got[0, n - 1] == tok.eot_token_id
    assert not got[0, n:].any()


@pytest.mark.parametrize("context_length", [16, 100])
def test_tokenize_other_context_lengths(peer, context_length):
    texts = ["a man wearing a black jacket", "", "she's holding a pink umbrella!"]
    got = tokenize(texts, context_length=context_length)
    assert got.shape == (3, context_length)
    assert torch.equal(got, _peer_tokenize(peer, texts, context_length))


def test_tokenize_rejects_too_short_context():
    with pytest.raises(ValueError):
        tokenize("a", context_length=1)


def test_default_tokenizer_is_shared():
    assert default_tokenizer() is default_tokenizer()


# --------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------

def test_decode_round_trips_plain_words(tok):
    for text in ["A man in a RED jacket", "  she   wears\tblue jeans ",
                 "naïve café", "行人"]:
        assert tok.decode(tok.encode(text)).strip() == clean_text(text)


def test_decode_round_trips_normalised_text(tok):
    # Decoding puts a space after every pre-tokenised piece, so compare with
    # spaces removed.
    for text in GENERATED + EDGE_CASES:
        decoded = tok.decode(tok.encode(text))
        assert decoded.replace(" ", "") == clean_text(text).replace(" ", ""), text


def test_decode_accepts_tensor(tok):
    ids = tok.encode("a grey backpack")
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)


# --------------------------------------------------------------------------
# placeholder
# --------------------------------------------------------------------------

def test_placeholder_token_id_matches_peer(peer):
    assert PLACEHOLDER == "*"
    assert peer.encode("*") == [placeholder_token_id()]


def test_placeholder_appears_once_in_template(tok):
    star = placeholder_token_id()
    ids = tok.encode("a photo of * , and she carries a red bag")
    assert ids.count(star) == 1
    row = tokenize("a photo of * , and she carries a red bag")[0]
    assert int((row == star).sum()) == 1
