"""Tests for the in-code CLIP tokenizer builder.

Checks single-token words, fallback tokenization of any text, saving and padding.
"""

import pathlib

import pytest
import transformers

from sdplay.runtime.tokenizer import build_clip_tokenizer
from sdplay.shapes.world import VOCABULARY


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> transformers.CLIPTokenizer:
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"), VOCABULARY)


def test_each_grammar_word_is_one_token(tokenizer: transformers.CLIPTokenizer) -> None:
    for word in VOCABULARY:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"], word


def test_arbitrary_text_still_tokenizes(tokenizer: transformers.CLIPTokenizer) -> None:
    text = "a cat, 3 dogs & ünïcödé 🙂 redder"
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_word_that_cannot_be_one_token_is_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="two words"):
        build_clip_tokenizer(tmp_path, ["red", "two words"])


def test_round_trip_and_padding(tokenizer: transformers.CLIPTokenizer, tmp_path: pathlib.Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    prompt = "a large red circle on the left on a gray background"
    assert loaded(prompt).input_ids == tokenizer(prompt).input_ids
    padded = loaded(prompt, padding="max_length", max_length=loaded.model_max_length).input_ids
    assert loaded.model_max_length == 77 and len(padded) == 77
    assert padded[-1] == loaded.pad_token_id == loaded.eos_token_id


def test_no_words_still_builds(tmp_path: pathlib.Path) -> None:
    tokenizer = build_clip_tokenizer(tmp_path, ())  # no merges at all: merges.txt holds only its header
    assert tokenizer.convert_ids_to_tokens(tokenizer("red").input_ids[1:-1]) == ["r", "e", "d</w>"]


def test_no_words_gives_a_byte_level_tokenizer(tmp_path: pathlib.Path) -> None:
    """Regression: with no merges, merges.txt once held an empty line, which the BPE loader rejects."""
    tokenizer = build_clip_tokenizer(tmp_path, ())
    ids = tokenizer("a red cat").input_ids
    assert (
        len(ids) == 2 + len("aredcat") and tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "aredcat"
    )
