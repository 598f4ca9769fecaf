"""Byte-level BPE tokenizer for CLIP's text encoder.

Text is cleaned (ftfy, HTML unescaping, whitespace collapsing), lower-cased,
split into word-like pieces by a regular expression, mapped byte by byte onto
printable unicode characters, and then merged into sub-word symbols with the
ranked BPE merges of ``bpe_simple_vocab_16e6.txt.gz`` (Radford et al. 2021,
byte-to-unicode scheme of GPT-2). The id layout must match the pretrained CLIP
token embedding exactly:

    ids [0, 256)          single byte symbols
    ids [256, 512)        single byte symbols that end a word ("x</w>")
    ids [512, 49406)      merged symbols, in merge-rank order
    49406, 49407          <|startoftext|>, <|endoftext|>

``tokenize`` turns captions into the fixed-length id tensor the text encoder
consumes; ``placeholder_token_id`` gives the id of ``*``, whose embedding the
model swaps for a pseudo-word token.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import regex
import torch

__all__ = [
    "PLACEHOLDER",
    "START_TOKEN",
    "END_TOKEN",
    "DEFAULT_MERGES_PATH",
    "SimpleTokenizer",
    "clean_text",
    "default_tokenizer",
    "tokenize",
    "placeholder_token_id",
]

# Word standing in for the pseudo-word token inside caption templates.
PLACEHOLDER = "*"

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

DEFAULT_MERGES_PATH = str(Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz")

# CLIP's vocabulary has 49152 entries besides the 256 word-final byte symbols;
# removing the 256 plain byte symbols and the 2 special tokens leaves the
# number of merges to read from the file.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 256 + 256 + NUM_MERGES + 2  # 49408

# Pre-tokenisation: special tokens, common English contractions, runs of
# letters, single digits (so numbers are spelled digit by digit), and runs of
# anything else that is neither a letter, a digit nor whitespace.
_PIECE_PATTERN = regex.compile(
    "|".join(
        [
            regex.escape(START_TOKEN),
            regex.escape(END_TOKEN),
            "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
            r"\p{L}+",
            r"\p{N}",
            r"[^\s\p{L}\p{N}]+",
        ]
    ),
    regex.IGNORECASE,
)
_WHITESPACE_RUN = regex.compile(r"\s+")


def _byte_symbols() -> list[tuple[int, str]]:
    """(byte, symbol) pairs in vocabulary order: 256 entries.

    Printable latin-1 bytes stand for themselves; the rest (control chars,
    space, soft hyphen, ...) are shifted to code points 256, 257, ... so that
    every symbol is visible and none is whitespace, which BPE splits on.
    The printable bytes come first, which fixes the ids of the base symbols.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    printable_set = set(printable)
    pairs = [(b, chr(b)) for b in printable]
    shifted = [b for b in range(256) if b not in printable_set]
    pairs += [(b, chr(256 + offset)) for offset, b in enumerate(shifted)]
    return pairs


def clean_text(text: str) -> str:
    """Normalise a caption the way CLIP did before BPE.

    Repairs mojibake (ftfy), unescapes HTML entities twice (captions scraped
    from the web are sometimes double-escaped, e.g. ``&amp;amp;``), collapses
    whitespace runs to one space, trims, and lower-cases.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text.lower()


class SimpleTokenizer:
    """CLIP byte-level BPE tokenizer.

    Args:
        merges_path: gzip'd BPE merges file; defaults to the copy beside
            this module.

    Attributes:
        vocab_size: number of token ids (49408).
        sot_token_id / eot_token_id: ids of ``<|startoftext|>`` /
            ``<|endoftext|>``.
        token_to_id / id_to_token: symbol <-> id tables.
        merge_ranks: (left, right) symbol pair -> priority (lower merges first).
    """

    def __init__(self, merges_path: str | None = None) -> None:
        merges_path = merges_path or DEFAULT_MERGES_PATH
        byte_symbols = _byte_symbols()
        self.byte_to_symbol: dict[int, str] = dict(byte_symbols)
        self.symbol_to_byte: dict[str, int] = {s: b for b, s in byte_symbols}

        with gzip.open(merges_path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        # The first line is a version header, not a merge.
        merge_lines = lines[1 : 1 + NUM_MERGES]
        merges = [tuple(line.split()) for line in merge_lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"unexpected BPE merges file: {merges_path}")

        base = [symbol for _, symbol in byte_symbols]
        vocab = base + [symbol + END_OF_WORD for symbol in base]
        vocab += [left + right for left, right in merges]
        vocab += [START_TOKEN, END_TOKEN]

        self.token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.id_to_token: dict[int, str] = dict(enumerate(vocab))
        self.merge_ranks: dict[tuple[str, str], int] = {
            pair: rank for rank, pair in enumerate(merges)
        }
        self.vocab_size = len(vocab)
        if self.vocab_size != VOCAB_SIZE or len(self.token_to_id) != VOCAB_SIZE:
            raise ValueError(f"BPE vocabulary has {self.vocab_size} ids, expected {VOCAB_SIZE}")
        self.sot_token_id = self.token_to_id[START_TOKEN]
        self.eot_token_id = self.token_to_id[END_TOKEN]

        # Per-word BPE results; captions reuse a small vocabulary, so this
        # makes repeated encoding cheap. Special tokens map to themselves
        # rather than being split into bytes.
        self._word_cache: dict[str, tuple[str, ...]] = {
            START_TOKEN: (START_TOKEN,),
            END_TOKEN: (END_TOKEN,),
        }

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-mapped word into vocabulary symbols (cached)."""
        cached = self._word_cache.get(word)
        if cached is None:
            cached = self._merge(word)
            self._word_cache[word] = cached
        return cached

    def _merge(self, word: str) -> tuple[str, ...]:
        # Start from single characters, marking the last one as word-final,
        # then repeatedly apply the best-ranked merge available anywhere in
        # the word, left to right and without overlap, until none applies.
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        ranks = self.merge_ranks
        while len(symbols) > 1:
            best_rank = None
            best_pair = None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            left, right = best_pair
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """Caption -> BPE ids, without start/end tokens."""
        ids: list[int] = []
        for piece in _PIECE_PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_to_id[symbol] for symbol in self.bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """BPE ids -> text. Word ends become spaces, so the result is the
        cleaned caption with pieces space-separated (plus a trailing space);
        ids of a partial UTF-8 sequence decode to U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        symbols = "".join(self.id_to_token[int(i)] for i in ids)
        raw = bytes(self.symbol_to_byte[ch] for ch in symbols)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> SimpleTokenizer:
    """Shared tokenizer over the bundled merges file, built on first use."""
    return SimpleTokenizer()


def tokenize(
    texts: str | Sequence[str], context_length: int = 77
) -> torch.LongTensor:
    """Captions -> padded id tensor for the text encoder.

    Each row is ``[sot, ids..., eot, 0, 0, ...]``. Captions that do not fit
    keep their first ``context_length - 2`` BPE ids, so eot is always present
    (at ``context_length - 1``); the text encoder pools its feature at eot.

    Args:
        texts: one caption or a sequence of N captions.
        context_length: L, the row length (77 for CLIP).

    Returns:
        LongTensor [N, L] (N = 1 for a single str).
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text)[: context_length - 2]
        row_ids = [tokenizer.sot_token_id] + ids + [tokenizer.eot_token_id]
        result[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
    return result


@functools.lru_cache(maxsize=1)
def placeholder_token_id() -> int:
    """Id of the single BPE token for ``PLACEHOLDER`` (``*``)."""
    ids = default_tokenizer().encode(PLACEHOLDER)
    if len(ids) != 1:
        raise RuntimeError(f"{PLACEHOLDER!r} encodes to {len(ids)} ids, expected exactly 1")
    return ids[0]
