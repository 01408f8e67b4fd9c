"""Prompt embeddings for A1111 prompts: chunks of 75, weights, prompt editing mid-run, on the tiny model and the
bundled shapes model."""

import numpy as np
import pytest
import torch

from sdplay.runtime.composition import local_manager
from sdplay.runtime.conditioning import CHUNK_TOKENS, Chunk, chunk_tokens, encode_prompts, tokenize
from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import generate
from sdplay.runtime.metadata import parse_infotext
from sdplay.runtime.request import GenerationRequest, Task

COMMA = 9


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB")).astype(int)


def test_chunks_hold_75_tokens_and_a_break_starts_a_new_one():
    chunks = chunk_tokens([(list(range(100, 250)), 1.0)], COMMA)
    assert [len(c.tokens) for c in chunks] == [75, 75]  # exactly full: no empty third chunk
    assert chunk_tokens([([1, 2], 1.0), None, ([3], 1.5)], COMMA) == [Chunk([1, 2], [1.0, 1.0]), Chunk([3], [1.5])]
    assert chunk_tokens([], COMMA) == [Chunk([], [])]  # an empty prompt is one empty chunk
    assert len(chunk_tokens([None, ([1], 1.0)], COMMA)) == 2  # a leading BREAK leaves an empty first chunk


def test_a_full_chunk_ends_at_a_recent_comma_as_a1111_does():
    tokens = [*range(100, 170), COMMA, *range(200, 210)]  # a comma at position 70, 81 tokens
    first, second = chunk_tokens([(tokens, 1.0)], COMMA)
    assert first.tokens == tokens[:71] and second.tokens == tokens[71:]
    far = [COMMA, *range(100, 180)]  # the comma is 75 tokens back: too far, cut at 75
    assert [len(c.tokens) for c in chunk_tokens([(far, 1.0)], COMMA)] == [75, 6]


def test_tokens_carry_their_weights(manager):
    pipe = manager.pipeline(Task.TXT2IMG, "Euler")
    (chunk,) = tokenize(pipe.tokenizer, "a (red:1.5) [cat]")
    red, cat = (pipe.tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("red", "cat"))
    assert chunk.weights[chunk.tokens.index(red)] == 1.5 and chunk.weights[chunk.tokens.index(cat)] == 1 / 1.1


def test_weight_one_embeds_exactly_as_diffusers(manager):
    pipe = manager.pipeline(Task.TXT2IMG, "Euler")
    expected, expected_negative = pipe.encode_prompt("a red circle", "cpu", 1, True, "blur")
    for prompt in ("a red circle", "a (red:1.0) circle", "a [(red)] circle"):
        kwargs = encode_prompts(pipe, prompt, "blur", 10).pipe_kwargs()
        assert torch.equal(kwargs["prompt_embeds"], expected), prompt
        assert torch.equal(kwargs["negative_prompt_embeds"], expected_negative)


def test_weights_keep_each_chunks_mean(manager):
    pipe = manager.pipeline(Task.TXT2IMG, "Euler")
    plain = encode_prompts(pipe, "a red cat", "", 10).pipe_kwargs()["prompt_embeds"]
    weighted = encode_prompts(pipe, "a (red:1.8) cat", "", 10).pipe_kwargs()["prompt_embeds"]
    assert not torch.equal(plain, weighted)
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-6)


def test_long_prompts_are_encoded_in_chunks_not_truncated(manager):
    first_75 = "cat " * 75
    pipe = manager.pipeline(Task.TXT2IMG, "Euler")
    conditioning = encode_prompts(pipe, first_75 + "dog " * 75, "", 10)
    kwargs = conditioning.pipe_kwargs()
    # Two chunks of 77; the (empty) negative prompt is padded to the same two chunks.
    assert kwargs["prompt_embeds"].shape[1] == 2 * (CHUNK_TOKENS + 2)
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    long = generate(manager, GenerationRequest(prompt=first_75 + "dog " * 75, steps=2, seed=3))
    short = generate(manager, GenerationRequest(prompt=first_75, steps=2, seed=3))
    assert long.warnings == []
    assert not np.array_equal(pixels(long), pixels(short))


def test_a_long_negative_prompt_pads_the_prompt(manager):
    result = generate(manager, GenerationRequest(prompt="cat", negative_prompt="dog, " * 60, steps=2, seed=1))
    assert pixels(result).std() > 0


def test_break_starts_a_new_chunk(manager):
    pipe = manager.pipeline(Task.TXT2IMG, "Euler")
    kwargs = encode_prompts(pipe, "a cat BREAK a dog", "", 10).pipe_kwargs()
    assert kwargs["prompt_embeds"].shape[1] == 2 * (CHUNK_TOKENS + 2)


def test_prompt_editing_changes_the_conditioning_mid_run(manager):
    def run(prompt: str, **kwargs) -> np.ndarray:
        return pixels(generate(manager, GenerationRequest(prompt=prompt, steps=4, seed=7, **kwargs)))

    edited, red, blue = run("a [red:blue:0.5] circle"), run("a red circle"), run("a blue circle")
    assert not np.array_equal(edited, red) and not np.array_equal(edited, blue)
    # An edit at the very end (step 4 of 4) never switches: it is the first prompt throughout.
    assert np.array_equal(run("a [red:blue:4] circle"), red)
    alternating = run("a [red|blue] circle")
    assert not np.array_equal(alternating, red) and not np.array_equal(alternating, blue)
    # Without guidance (CFG 1) only the positive embeddings are passed and replaced.
    assert run("a [red:blue:0.5] circle", guidance_scale=1).std() > 0


def test_prompt_editing_works_in_a_batch_and_in_inpainting(tiny_inpaint_model):
    from PIL import Image

    manager = local_manager(device="cpu")
    manager.load(str(tiny_inpaint_model))
    image, mask = Image.new("RGB", (64, 64), "gray"), Image.new("L", (64, 64), 255)
    # Strength 0.75 runs 3 of the 4 steps, whose calls A1111 counts from 0: the edit switches after call 1.
    request = GenerationRequest(
        task=Task.INPAINT, prompt="[cat:dog:1]", steps=4, seed=2, image=image, mask=mask, batch_size=2
    )
    result = generate(manager, request)
    plain = generate(manager, GenerationRequest(**{**request.__dict__, "prompt": "cat"}))
    assert len(result.images) == 2
    assert not np.array_equal(pixels(result), pixels(plain))


def test_the_infotext_keeps_the_prompt_as_typed(manager):
    typed, negative = "a [red:blue:0.5] (circle:1.2) BREAK \\(x\\)", "[blur|noise]"
    result = generate(manager, GenerationRequest(prompt=typed, negative_prompt=negative, steps=2, seed=1))
    info = parse_infotext(result.images[0].info["parameters"])
    assert info.prompt == typed and info.negative_prompt == negative


@pytest.mark.parametrize(
    ("prompt", "negative", "message"),
    [
        ("a (red circle", "", "The prompt has a '\\(' at character 3 that is never closed"),
        ("cat", "blur]", "The negative prompt has a '\\]' at character 5 that closes nothing"),
        ("[cat:dog:9]", "", "switches at step 9, but the run has 4 steps"),
    ],
)
def test_syntax_errors_are_user_errors_and_the_manager_keeps_serving(manager, prompt, negative, message):
    with pytest.raises(UserError, match=message):
        generate(manager, GenerationRequest(prompt=prompt, negative_prompt=negative, steps=4))
    assert len(generate(manager, GenerationRequest(prompt="cat", steps=1)).images) == 1


@pytest.mark.parametrize(("model", "steps", "weight"), [("manager", 3, 1.5), ("shapes", 8, 1.4)])
def test_weight_one_gives_bit_identical_pixels_and_a_weight_changes_them(request, model, steps, weight):
    """On the tiny random model and on the bundled one."""
    manager = request.getfixturevalue(model)

    def run(prompt: str) -> np.ndarray:
        return pixels(generate(manager, GenerationRequest(prompt=prompt, steps=steps, seed=4)))

    plain = run("a red circle")
    assert np.array_equal(run("a (red:1.0) circle"), plain)
    assert not np.array_equal(run(f"a (red:{weight}) circle"), plain)
