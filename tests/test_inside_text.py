"""The Inside tab's text embeddings, against independent computations: the model's own embedding table and encoder
output for the recorded vectors, a brute-force search for the nearest tokens, and raw encoder calls for the causal
test (on the bundled model, whose text encoder is CLIP's architecture)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from bench.handmade import synthetic_run
from sdplay.explain.capture import explain
from sdplay.explain.export import load_run, save_run
from sdplay.inside.text import (
    CausalRequest,
    Neighbours,
    NeighboursRequest,
    TextEmbeddings,
    availability,
    causal_summary,
    causal_test,
    cosine_matrix,
    first_chunk,
    nearest_tokens,
    neighbours_table,
    signed_colours,
    similarity_image,
    vector_strips,
    whole_words,
)
from sdplay.runtime.errors import UserError
from sdplay.runtime.request import GenerationRequest

PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def run(shapes):
    return explain(shapes, GenerationRequest(prompt=PROMPT, sampler="Euler", steps=2, seed=1))


def encoder_output(pipe, ids: list[int]) -> torch.Tensor:
    """The text encoder's last hidden state for one chunk of `ids`, padded to 77 by the tokenizer's own rule."""
    padded = ids + [pipe.tokenizer.pad_token_id] * (pipe.tokenizer.model_max_length - len(ids))
    with torch.no_grad():
        return pipe.text_encoder(torch.tensor([padded]))[0][0, : len(ids)]


def test_the_recorded_vectors_are_the_models_table_rows_and_encoder_output(shapes, run):
    pipe = shapes.model.pipe
    ids = pipe.tokenizer(PROMPT).input_ids  # start, words, end
    assert run.token_ids.tolist() == ids and len(run.tokens) == len(ids)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(run.token_embeddings, table[ids])
    # The static vectors are the vocabulary's rows alone: CLIP adds a position embedding only inside the encoder.
    positions = pipe.text_encoder.get_submodule("embeddings.position_embedding").weight.detach()[: len(ids)]
    assert not torch.allclose(run.token_embeddings, table[ids] + positions)
    assert torch.allclose(run.text_embeddings, encoder_output(pipe, ids), atol=1e-6)


def test_emphasis_and_chunks_record_the_plain_encoder_output_of_every_chunk(manager):
    """Emphasis weights scale what the UNet reads; the recorded vectors are the encoder's own, chunk after chunk."""
    pipe = manager.model.pipe
    run = explain(manager, GenerationRequest(prompt="a (red:1.5) cat BREAK dog", steps=2, seed=3, width=64, height=64))
    chunks = [pipe.tokenizer("a red cat").input_ids, pipe.tokenizer("dog").input_ids]
    assert run.token_ids.tolist() == chunks[0] + chunks[1]
    expected = torch.cat([encoder_output(pipe, ids) for ids in chunks])
    assert torch.allclose(run.text_embeddings, expected, atol=1e-6)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(run.token_embeddings, table[chunks[0] + chunks[1]])
    assert first_chunk(run.tokens) == run.tokens[: len(chunks[0])]


def test_the_export_keeps_the_vectors_and_older_files_still_replay(run, tmp_path):
    again = load_run(save_run(run, tmp_path / "run.safetensors"))
    for name in ("token_ids", "token_embeddings", "text_embeddings"):
        assert torch.equal(getattr(again, name), getattr(run, name)), name
    assert again.recipe.seed == run.recipe.seed == 1
    older = replace(run, token_ids=None, token_embeddings=None, text_embeddings=None)
    replayed = load_run(save_run(older, tmp_path / "older.safetensors"))
    assert replayed.token_embeddings is None and TextEmbeddings.of_run(replayed) is None
    assert "saved before sdplay recorded text embeddings" in availability(replayed, "shapes")


def hostile(tmp_path: Path, extra: dict[str, torch.Tensor]) -> Path:
    """A synthetic run of 3 tokens saved with `extra` tensors added to its file."""
    path = save_run(synthetic_run(tokens=3), tmp_path / "run.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(path)) | extra, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"token_embeddings": torch.zeros(3, 8)}, "come together"),
        ({"token_embeddings": torch.zeros(3, 8), "text_embeddings": torch.zeros(3, 9)}, "differ in shape"),
        (
            {"token_embeddings": torch.zeros(3, 5000), "text_embeddings": torch.zeros(3, 5000)},
            "_embeddings' is F32 \\[3, 5000\\]",
        ),
        (
            {"token_embeddings": torch.zeros(4, 8), "text_embeddings": torch.zeros(4, 8)},
            "_embeddings' is F32 \\[4, 8\\]",
        ),
        ({"token_ids": torch.zeros(3)}, "'token_ids' is F32"),
    ],
)
def test_embeddings_against_the_contract_are_refused_from_the_header(tmp_path, extra, match, no_tensor_is_built):
    path = hostile(tmp_path, extra)
    with pytest.raises(UserError, match=match) as error:
        load_run(path)
    assert str(tmp_path) not in str(error.value)


def test_a_synthetic_run_with_embeddings_replays(tmp_path):
    path = hostile(tmp_path, {"token_embeddings": torch.ones(3, 8), "text_embeddings": torch.ones(3, 8)})
    assert TextEmbeddings.of_run(load_run(path)).static.shape == (3, 8)


def test_the_cosine_similarities_and_movement_match_torch(run):
    embeddings = TextEmbeddings.of_run(run)
    for vectors in (run.token_embeddings, run.text_embeddings):
        expected = torch.nn.functional.cosine_similarity(vectors[:, None], vectors[None, :], dim=-1)
        assert np.allclose(cosine_matrix(vectors.numpy()), expected.numpy(), atol=1e-5)
    cosine, distance = embeddings.movement()
    assert np.allclose(cosine, torch.nn.functional.cosine_similarity(run.token_embeddings, run.text_embeddings))
    assert np.allclose(distance, (run.text_embeddings - run.token_embeddings).norm(dim=1), rtol=1e-5)
    assert embeddings.labels == ["<start>", "a", "large", "red", "circle", "on", "the", "left", "<end>"]
    table = embeddings.table()
    assert (
        "| 0 | `<\\|startoftext\\|>` | 604 |" in table
        and "| 3 | `red</w>` | 531 |" in table
        and table.count("\n") == len(run.tokens) + 1
    )


def test_the_pictures_draw_each_value_in_its_place():
    vectors = np.zeros((3, 4), dtype=np.float32)
    vectors[1, 2], vectors[2, 0] = 1.0, -1.0
    assert signed_colours(np.array([1.0, 0.0, -1.0]), 1.0).tolist() == [[202, 0, 32], [255, 255, 255], [5, 113, 176]]
    strips = np.asarray(vector_strips(vectors, ["x", "y", "z"], "Test"))
    # The one positive number is one red cell, right of the one negative's blue cell, in the row above it.
    red, blue = (np.argwhere(np.all(strips == colour, axis=-1)) for colour in ((202, 0, 32), (5, 113, 176)))
    assert len(red) and len(blue) and red[:, 0].max() < blue[:, 0].min() and red[:, 1].min() > blue[:, 1].max()
    matrix = np.asarray(similarity_image(np.eye(2), ["a", "b"], "Test"))
    red = np.all(matrix == (202, 0, 32), axis=-1)
    assert red.sum() > 0 and red.any(axis=0).sum() == red.any(axis=1).sum()  # the diagonal: two square cells


def test_nearest_tokens_match_a_brute_force_search(shapes, run):
    pipe = shapes.model.pipe
    table = pipe.text_encoder.get_input_embeddings().weight.detach().numpy().astype(np.float64)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    words = whole_words(pipe.tokenizer).numpy()
    tokens = tuple(first_chunk(run.tokens))
    for words_only in (False, True):
        found = nearest_tokens(shapes, NeighboursRequest("shapes", tokens, count=4, words_only=words_only))
        assert [item.token for item in found] == list(dict.fromkeys(tokens))
        for item in found:
            token = pipe.tokenizer.convert_tokens_to_ids(item.token)
            scores = unit @ unit[token]
            scores[token] = -np.inf
            if words_only:
                scores[~words] = -np.inf
            best = np.argsort(-scores)[:4]
            assert [name for name, _ in item.nearest] == pipe.tokenizer.convert_ids_to_tokens(best.tolist())
            assert np.allclose([score for _, score in item.nearest], scores[best], atol=1e-5)
    red = next(item for item in found if item.token == "red</w>")
    assert red.nearest[0][0] == "orange</w>"  # the bundled model learned its colours alike


def test_the_bundled_text_encoder_is_causal(shapes, run):
    pipe = shapes.model.pipe
    # Independently: the encoder's output for two prompts that differ in their last word.
    left, right = pipe.tokenizer(PROMPT).input_ids, pipe.tokenizer(PROMPT.replace("left", "right")).input_ids
    a, b = encoder_output(pipe, left), encoder_output(pipe, right)
    assert torch.equal(a[:7], b[:7]) and (a[7] - b[7]).norm() > 1e-3

    test = causal_test(shapes, CausalRequest("shapes", tuple(run.tokens)))
    later, early = test.edits
    assert (later.position, later.role, early.position, early.role) == (7, "later word", 1, "early word")
    assert later.new != "left</w>" and early.new != "a</w>"
    for k, edit in enumerate(test.edits):
        assert np.all(test.cosine_change[k, : edit.position] == 0) and np.all(test.distance[k, : edit.position] == 0)
        assert np.all(test.cosine_change[k, edit.position :] > 1e-6), test.cosine_change[k]  # everything after moves
        assert test.cosine_change[k, edit.position] > 1e-3
    assert test.causal and "changed by at most **0**" in causal_summary(test) and "**causal**" in causal_summary(test)
    # The measured change is the raw encoder's, for a typed word too.
    typed = causal_test(shapes, CausalRequest("shapes", tuple(run.tokens), " right "))
    assert typed.edits[0].new == "right</w>"
    expected = 1 - torch.nn.functional.cosine_similarity(a, b).numpy()
    assert np.allclose(typed.cosine_change[0, 7:], expected[7:], atol=1e-6)


def test_the_causal_test_and_neighbours_refuse_bad_requests_clearly(shapes, run):
    tokens = tuple(run.tokens)
    with pytest.raises(UserError, match="tokens for this model") as error:
        causal_test(shapes, CausalRequest("shapes", tokens, "zebra giraffe"))
    assert str(error.value).startswith("“zebra giraffe” is ")  # with the pieces it is, then what to do
    with pytest.raises(UserError, match="made by tiny, and shapes is loaded"):
        causal_test(shapes, CausalRequest("tiny", tokens))
    with pytest.raises(UserError, match="at least one word"):
        causal_test(shapes, CausalRequest("shapes", tokens[:1] + tokens[-1:]))
    with pytest.raises(UserError, match="not in the loaded model's vocabulary"):
        nearest_tokens(shapes, NeighboursRequest("shapes", ("<|startoftext|>", "zzzunknown</w>")))
    with pytest.raises(UserError, match="one word"):
        causal_test(shapes, CausalRequest("shapes", tokens, "x" * 101))
    # The model is free again: a good request still runs.
    assert causal_test(shapes, CausalRequest("shapes", tokens)).causal


def test_a_replay_without_its_model_says_what_needs_the_model(run):
    text = availability(run, "tiny")
    assert "made by **shapes**" in text and "**tiny** is loaded" in text
    assert "nearest vocabulary tokens and the causal test need shapes's own table and encoder" in text
    assert "ask shapes itself" in availability(run, "shapes")
    assert "Record a run" in availability(None, "shapes")


def test_the_nearest_tokens_table_shows_the_start_and_end_tokens():
    """Markdown reads a bare <start> as an HTML tag and shows an empty cell (issue 23's dry run): it is code."""
    found = [Neighbours("<|startoftext|>", [("a</w>", 0.5)]), Neighbours("red</w>", [("orange</w>", 0.9)])]
    found.append(Neighbours("<|endoftext|>", [("the</w>", 0.25)]))
    rows = neighbours_table(found, "<|startoftext|>", "<|endoftext|>").splitlines()[2:]
    assert rows == [
        "| `<start>` | `a</w>` 0.50 |",
        "| `red` | `orange</w>` 0.90 |",
        "| `<end>` | `the</w>` 0.25 |",
    ]
