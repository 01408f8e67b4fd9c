"""Attention at a point against independent computations: a hand softmax(q·kᵀ/√d) of q and k hooked during the
real run, and the run's own recorded cross-attention maps at the clicked pixel (also from a replayed file)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdplay.explain.capture import explain
from sdplay.explain.export import load_run, save_run
from sdplay.explain.render import ExplainView
from sdplay.inside.attention import (
    ALL_BLOCKS,
    MAX_BARS,
    PointRequest,
    attend_at,
    attention_blocks,
    point_cell,
    recorded_shares,
    self_attention_image,
    share_chart,
    shown_bars,
    token_labels,
)
from sdplay.inside.attention_ui import attention_at, draw_bars
from sdplay.inside.unet_step import step_input
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import Executor, JobSpec
from sdplay.runtime.request import GenerationRequest, Limits
from tests.helpers import running_unet
from tests.zero_gpu import ZeroGPU

REQUEST = GenerationRequest(prompt="a large red circle on the left", sampler="Euler", steps=5, seed=1)


def test_a_point_falls_in_the_cell_that_holds_it():
    assert point_cell((0.0, 0.0), (8, 8)) == (0, 0)
    assert point_cell((0.3, 0.7), (8, 8)) == (5, 2)  # (x, y): column from x, row from y
    assert point_cell((1.0, 1.0), (4, 2)) == (3, 1)  # the far edge belongs to the last cell


def test_self_attention_equals_a_hand_softmax_of_each_layers_q_and_k(shapes):
    """Reference: to_q and to_k of every self-attention layer of the block, hooked during the run at one step;
    softmax(q·kᵀ/√d) computed here for every place, and the clicked place's row taken. The map shown is the
    mean of these rows over the block's layers and heads."""
    unet = running_unet(shapes)  # the UNet explain() runs on this thread
    block, step, point = "up_blocks.3", 3, (0.3, 0.55)
    layers = [m for n, m in unet.named_modules() if n.startswith(f"{block}.") and n.endswith(".attn1")]
    assert len(layers) == 2
    calls = []
    projected: list[dict] = []

    def keep(index: int, name: str):
        def hook(module, args, output) -> None:
            if len(calls) - 1 == step:
                projected[index][name] = output[-1].detach().clone()  # the prompt's image of [negative, prompt]

        return hook

    handles = [unet.register_forward_pre_hook(lambda module, args: calls.append(1))]
    for index, layer in enumerate(layers):
        projected.append({})
        handles += [
            layer.to_q.register_forward_hook(keep(index, "q")),
            layer.to_k.register_forward_hook(keep(index, "k")),
        ]
    try:
        run = explain(shapes, REQUEST)
    finally:
        for handle in handles:
            handle.remove()

    found = attend_at(shapes, PointRequest(step_input(run, step), block, point))
    h, w = run.latents.shape[-2:]  # this block works at the latent's resolution
    assert found.grid == (h, w) and found.cell == point_cell(point, (h, w))
    place = found.cell[0] * w + found.cell[1]
    rows = []
    for layer, kept in zip(layers, projected, strict=True):
        heads = layer.heads
        q = kept["q"].view(h * w, heads, -1).transpose(0, 1)  # [heads, places, d]
        k = kept["k"].view(h * w, heads, -1).transpose(0, 1)
        probabilities = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        rows.append(probabilities[:, place])  # [heads, places]
    reference = torch.stack(rows)
    torch.testing.assert_close(found.self_rows, reference, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(found.self_map(), reference.mean((0, 1)).reshape(h, w).numpy(), atol=1e-6)
    np.testing.assert_allclose(found.head_maps()[1], reference[:, 1].mean(0).reshape(h, w).numpy(), atol=1e-6)
    assert found.self_rows.sum(-1).sub(1).abs().max() < 1e-5
    image = self_attention_image(Image.fromarray(run.image).resize((256, 256)), found)
    assert image.size == (256, 256)


def test_cross_attention_bars_equal_the_recorded_maps_at_that_pixel(manager, tmp_path):
    run = explain(manager, GenerationRequest(prompt="a red cat", negative_prompt="dog", steps=4, seed=2))
    point = (0.8, 0.1)
    for block, maps in run.attention.items():
        h, w = maps.shape[-2:]
        row, column = min(int(0.1 * h), h - 1), min(int(0.8 * w), w - 1)
        shares = recorded_shares(run, 2, block, point)
        np.testing.assert_array_equal(shares.shares, maps[2, :, row, column].float().numpy())
        assert shares.cell == (row, column) and shares.grid == (h, w)
        assert shares.shares.sum() == pytest.approx(1, abs=3e-3)
    assert shares.labels == ["<start>", "a", "red", "cat", "<end>", "<padding>"]

    # All blocks: each block's cell at the point, weighted by its number of layers.
    expected = sum(
        run.layers[b]
        * m[2, :, min(int(0.1 * m.shape[-2]), m.shape[-2] - 1), min(int(0.8 * m.shape[-1]), m.shape[-1] - 1)]
        .float()
        .numpy()
        for b, m in run.attention.items()
    ) / sum(run.layers.values())
    np.testing.assert_allclose(recorded_shares(run, 2, ALL_BLOCKS, point).shares, expected, rtol=1e-6)

    # A replayed file gives the same bars, with no model involved.
    replayed = load_run(save_run(run, tmp_path / "run.safetensors"))
    block = next(iter(run.attention))
    np.testing.assert_array_equal(
        recorded_shares(replayed, 2, block, point).shares, recorded_shares(run, 2, block, point).shares
    )


def test_cross_attention_per_head_averages_to_the_recorded_map(shapes):
    run = explain(shapes, REQUEST)
    for block in ("down_blocks.1", "up_blocks.3"):
        found = attend_at(shapes, PointRequest(step_input(run, 2), block, (0.3, 0.5), cross_heads=True))
        per_head = found.cross_heads()
        assert per_head.shape == (found.self_rows.shape[1], len(run.tokens) + 1)
        np.testing.assert_allclose(per_head.sum(-1), 1, atol=1e-5)
        recorded = recorded_shares(run, 2, block, (0.3, 0.5)).shares
        np.testing.assert_allclose(per_head.mean(0), recorded, atol=2e-3)  # the recording is fp16


def test_bad_blocks_points_and_models_are_clear_errors(manager, shapes):
    run = explain(shapes, REQUEST)
    request = step_input(run, 0)
    with pytest.raises(UserError, match="Pick one of the blocks with attention: down_blocks.0, down_blocks.1"):
        attend_at(shapes, PointRequest(request, "down_blocks.3", (0.5, 0.5)))
    with pytest.raises(UserError, match="Click inside the image"):
        attend_at(shapes, PointRequest(request, "mid_block", (1.5, 0.5)))
    with pytest.raises(UserError, match="made by shapes, and the loaded model is tiny"):
        attend_at(manager, PointRequest(request, "mid_block", (0.5, 0.5)))
    with pytest.raises(UserError, match="not in 'nowhere'"):
        recorded_shares(run, 0, "nowhere", (0.5, 0.5))
    blocks = attention_blocks(shapes.model.pipe.unet)
    assert blocks == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.2", "up_blocks.3"]
    assert set(blocks) == set(run.attention)


def test_long_prompts_show_their_largest_shares_and_the_rest_in_one_bar():
    labels = token_labels(["<|startoftext|>", *(f"w{i}</w>" for i in range(40)), "<|endoftext|>"])
    shares = np.linspace(1, 2, len(labels))
    shares /= shares.sum()
    shown, values = shown_bars(labels, shares)
    assert len(shown) == MAX_BARS and shown[-1] == f"{len(labels) - MAX_BARS + 1} others"
    assert values.sum() == pytest.approx(1) and shown[:-1] == labels[len(labels) - MAX_BARS + 1 :]
    chart = share_chart(labels, shares, "title")
    assert chart.height >= 32 * MAX_BARS


def test_the_point_view_crosses_a_zerogpu_boundary_as_picklable_cpu_data(manager):
    """Under a simulation of ZeroGPU (a forked worker, everything pickled both ways) the job gives what it gives
    in this process."""
    run = explain(manager, GenerationRequest(prompt="a red cat", negative_prompt="dog", steps=3, seed=2))
    job = JobSpec(attend_at, PointRequest(step_input(run, 1), "up_blocks.0", (0.6, 0.4), cross_heads=True), Limits())
    *_, local = manager.executor.run(job)
    zero_gpu = ZeroGPU()
    *_, remote = Executor(manager, gpu=zero_gpu).run(job)
    assert len(zero_gpu.workers) == 1  # it ran in a forked worker
    assert (remote.block, remote.grid, remote.cell, remote.layers) == (
        local.block,
        local.grid,
        local.cell,
        local.layers,
    )
    assert torch.equal(remote.self_rows, local.self_rows) and torch.equal(remote.cross_rows, local.cross_rows)


def test_a_replayed_run_of_another_model_gets_a_note_under_the_map_and_its_bars_still_work(manager, shapes):
    """The section's handlers, called as the page calls them: the self-attention view (a job) cannot run a run that
    the loaded model did not make and says so in its note, while the cross-attention bars read the recorded maps."""
    view = ExplainView(explain(shapes, REQUEST))
    shown = attention_at(manager, Limits(), None, shown=view, at=1, block="mid_block", split=False, where=(0.5, 0.5))
    assert shown[0] is None and "made by shapes, and the loaded model is tiny" in shown[1]
    picture, chart = draw_bars(view, 1, ALL_BLOCKS, (0.5, 0.5))
    assert picture.size == view.size and chart.width > 0
