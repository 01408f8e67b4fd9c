"""Build small CLIP BPE tokenizers in code, with chosen words as single tokens.

Used by the bundled shapes model (grammar words) and by tests that need a tokenizer without downloads.
"""

from __future__ import annotations

import functools
import itertools
import json
import pathlib
from collections.abc import Sequence

import transformers

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply ranked merges the way BPE does: always the best-ranked adjacent pair first."""
    while len(pieces) > 1:
        pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(itertools.pairwise(pieces))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def build_clip_tokenizer(folder: pathlib.Path, words: Sequence[str] = ()) -> transformers.CLIPTokenizer:
    """Write vocab.json + merges.txt to `folder` and return a CLIP tokenizer where each of `words` is one token.

    Any other text still tokenizes, into byte-level characters and whatever subwords the merges make.
    """
    alphabet = list(byte_to_unicode().values())
    vocab = [*alphabet, *(c + END_OF_WORD for c in alphabet)]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        chars = [byte_to_unicode()[b] for b in word.encode()]
        pieces = _bpe([*chars[:-1], chars[-1] + END_OF_WORD], ranks)
        # New merges go last, so they fire only after all earlier merges are done: earlier words stay one token.
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    vocab = [*dict.fromkeys(vocab), BOS, EOS]

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    # One line per merge: an empty line (no words) is rejected by the BPE loader as an invalid merge.
    merges = "".join(f"{a} {b}\n" for a, b in ranks)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")

    tokenizer = transformers.CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=77,
        pad_token=EOS,
    )
    bad = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if bad:
        raise ValueError(f"these words do not encode to a single token: {bad}")
    return tokenizer
