"""The Explain capture on a tiny random model: it changes nothing, records true probabilities, and exports."""

import json
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bench.handmade import edited, synthetic_run, write_safetensors
from sdplay.explain import export
from sdplay.explain.capture import RUN_TENSORS, ExplainRun, explain
from sdplay.explain.export import load_run, save_run
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.generate import Cancelled, generate
from sdplay.runtime.request import GenerationRequest, Limits, Task
from tests.helpers import running_unet

REQUEST = GenerationRequest(prompt="a red cat", negative_prompt="dog", sampler="Euler", steps=5, seed=3)


def processors(manager) -> dict[str, type]:
    return {name: type(p) for name, p in running_unet(manager).attn_processors.items()}


def test_recording_changes_nothing_and_restores_every_processor(manager):
    before = processors(manager)
    run = explain(manager, REQUEST)
    plain = np.asarray(generate(manager, REQUEST).images[0])
    assert np.abs(run.image.astype(int) - plain.astype(int)).max() == 0
    assert processors(manager) == before


def test_processors_are_restored_after_an_error_or_stop(manager):
    before = processors(manager)

    def fail(update):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        explain(manager, REQUEST, control=JobControl(on_step=fail))
    assert processors(manager) == before
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        explain(manager, REQUEST, control=JobControl(cancel=cancel, on_step=lambda update: cancel.set()))
    assert processors(manager) == before


def test_probabilities_are_non_negative_and_sum_to_one_over_all_77_positions(manager):
    run = explain(manager, REQUEST)
    for maps in (*run.attention.values(), *run.negative_attention.values()):
        maps = maps.float()
        assert maps.min() >= 0
        torch.testing.assert_close(maps.sum(dim=1), torch.ones_like(maps[:, 0]), atol=2e-3, rtol=0)
    assert [len(m[0]) for m in run.attention.values()] == [len(run.tokens) + 1] * len(run.attention)
    assert run.tokens == ["<|startoftext|>", "a</w>", "red</w>", "cat</w>", "<|endoftext|>"]
    assert run.negative_tokens == ["<|startoftext|>", "dog</w>", "<|endoftext|>"]


def test_tokens_are_what_the_encoder_reads_with_prompt_syntax_parsed(manager, tmp_path):
    request = GenerationRequest(prompt="a (red:1.3) [cat:dog:2] BREAK dog", negative_prompt="(dog)", steps=3, seed=1)
    run = explain(manager, request)
    # The first prompt of the edit, chunk after chunk: no brackets, no BREAK; the weights kept apart.
    start, end = "<|startoftext|>", "<|endoftext|>"
    assert run.tokens == [start, "a</w>", "red</w>", "cat</w>", end, start, "dog</w>", end]
    assert run.weights.tolist() == pytest.approx([1, 1, 1.3, 1, 1, 1, 1, 1])
    assert run.negative_tokens == [start, "dog</w>", end]
    assert run.recipe.chunks == 2 and run.recipe.prompt_schedule["prompt"] == [
        [2, "a (red:1.3) cat BREAK dog"],
        [3, "a (red:1.3) dog BREAK dog"],
    ]
    for maps in run.attention.values():  # every chunk's tokens and one padding channel, still summing to 1
        assert maps.shape[1] == len(run.tokens) + 1
        torch.testing.assert_close(maps.float().sum(1), torch.ones_like(maps[:, 0].float()), atol=2e-3, rtol=0)
    again = load_run(save_run(run, tmp_path / "run.safetensors"))
    assert again.tokens == run.tokens and torch.equal(again.weights, run.weights.float())
    assert again.recipe.prompt_schedule == run.recipe.prompt_schedule
    long = explain(manager, GenerationRequest(prompt="cat " * 100, steps=2, seed=1))
    assert len(long.tokens) == 77 + 27 and long.tokens[76:78] == [end, start]  # 75 + 25 tokens in two chunks
    with pytest.raises(UserError, match="The negative prompt has a '\\(' at character 1"):
        explain(manager, GenerationRequest(prompt="cat", negative_prompt="(dog", steps=2))


def test_recorded_maps_equal_an_independent_softmax_of_one_layer(manager):
    """Reference: hook one cross-attention layer, compute softmax(QKᵀ/√d) ourselves, average the heads."""
    unet = running_unet(manager)  # the UNet explain() runs on this thread
    layer = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    references = []

    def hook(module, args, kwargs):
        hidden, context = args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        batch, heads = hidden.shape[0], module.heads
        q = module.to_q(hidden).view(batch, -1, heads, module.inner_dim // heads).transpose(1, 2)
        k = module.to_k(context).view(batch, -1, heads, module.inner_dim // heads).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1).mean(1)
        references.append(probs.detach())

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run = explain(manager, REQUEST)
    finally:
        handle.remove()
    assert run.layers["mid_block"] == 1 and len(references) == run.steps  # Euler: one UNet call per step
    for step, reference in enumerate(references):
        cond, uncond = reference[1], reference[0]  # diffusers batches [negative, prompt]
        recorded = run.attention["mid_block"][step].float().flatten(1).T  # [pixels, T+1]
        expected = torch.cat([cond[:, :5], cond[:, 5:].sum(-1, keepdim=True)], dim=-1)
        torch.testing.assert_close(recorded, expected, atol=1e-3, rtol=1e-3)
        negative = run.negative_attention["mid_block"][step].float().flatten(1).T
        torch.testing.assert_close(negative[:, :3], uncond[:, :3], atol=1e-3, rtol=1e-3)


def test_x0_matches_the_schedulers_pred_original_sample(manager, monkeypatch):
    originals = []
    step = DDIMScheduler.step

    def recording_step(self, *args, **kwargs):
        output = step(self, *args, **kwargs)
        originals.append(output[1] if isinstance(output, tuple) else output.pred_original_sample)
        return output

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    run = explain(manager, GenerationRequest(prompt="a red cat", sampler="DDIM", steps=6, seed=1))
    assert len(originals) == run.steps == 6
    for recorded, expected in zip(run.x0, originals, strict=True):
        torch.testing.assert_close(recorded, expected[0].float(), atol=1e-4, rtol=1e-4)
    # The guidance term is what guidance adds to the unconditional prediction.
    torch.testing.assert_close(run.guidance, 7.0 * (run.eps_cond - run.eps_uncond), atol=1e-4, rtol=1e-4)


def test_heun_steps_group_two_unet_calls(manager):
    run = explain(manager, GenerationRequest(prompt="cat", sampler="Heun", steps=4, seed=1))
    assert run.steps == 4 and run.unet_calls == 2 * 4 - 1
    assert torch.all(run.sigmas[:-1] > run.sigmas[1:])  # the noise level falls step by step


def test_plms_counts_its_warm_up_call_in_the_first_step(manager):
    """PLMS lists n + 1 timesteps for n steps: its first step calls the UNet twice, as Heun's steps do."""
    run = explain(manager, GenerationRequest(prompt="cat", sampler="PLMS", steps=6, seed=1))
    assert (run.steps, run.first_step, run.unet_calls) == (6, 0, 7)
    # It visits the noise levels of the 6-step schedule, each once, as DDIM does with the same model config.
    ddim = explain(manager, GenerationRequest(prompt="cat", sampler="DDIM", steps=6, seed=1))
    assert torch.equal(run.timesteps, ddim.timesteps) and torch.equal(run.sigmas, ddim.sigmas)
    assert all(len(getattr(run, name)) == 6 for name in ("latents", "x0", "eps_cond", "guidance"))
    assert all(len(maps) == 6 for maps in (*run.attention.values(), *run.negative_attention.values()))
    # The first step starts from the seed's noise: the x_t of the DDIM run with the same seed.
    assert torch.equal(run.latents[0], ddim.latents[0])


def test_plms_img2img_starts_the_schedule_where_strength_says(manager):
    image = Image.new("RGB", (64, 64), "gray")
    request = GenerationRequest(task=Task.IMG2IMG, prompt="cat", sampler="PLMS", steps=8, strength=0.5, image=image)
    run = explain(manager, request)
    assert (run.steps, run.first_step, run.unet_calls) == (4, 4, 5)
    assert torch.all(run.sigmas[:-1] > run.sigmas[1:])


def test_without_guidance_there_is_no_negative_branch(manager):
    run = explain(manager, GenerationRequest(prompt="cat", steps=3, guidance_scale=1.0, sampler="Euler"))
    assert run.negative_attention == {} and torch.count_nonzero(run.eps_uncond) == 0
    assert torch.count_nonzero(run.guidance) == 0


def test_img2img_and_inpaint_show_where_the_schedule_starts_and_the_mask(manager):
    image = Image.new("RGB", (64, 64), "gray")
    run = explain(manager, GenerationRequest(task=Task.IMG2IMG, prompt="cat", steps=10, strength=0.5, image=image))
    assert (run.steps, run.first_step, run.recipe.strength) == (5, 5, 0.5)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    run = explain(
        manager, GenerationRequest(task=Task.INPAINT, prompt="cat", steps=4, image=image, mask=mask, mask_blur=0)
    )
    assert run.mask.shape == run.latents.shape[-2:] and run.blended.shape == run.latents.shape
    assert run.mask[:, :3].min() == 1 and run.mask[:, 5:].max() == 0  # left half repaints, at latent scale


def test_export_follows_the_contract_and_round_trips(manager, tmp_path):
    run = explain(manager, REQUEST)
    path = save_run(run, tmp_path / "run.safetensors")
    tensors = load_file(path)
    steps, tokens = run.steps, len(run.tokens)
    assert tensors["image"].dtype == torch.uint8 and tuple(tensors["image"].shape) == (64, 64, 3)
    assert tuple(tensors["latents"].shape) == tuple(tensors["x0"].shape) == (steps, 4, 8, 8)
    assert tuple(tensors["attention"].shape) == (steps, tokens, 8, 8)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["tokens"]) == run.tokens and json.loads(metadata["recipe"])["seed"] == 3
    again = load_run(path)
    assert np.array_equal(again.image, run.image) and again.recipe == run.recipe and again.tokens == run.tokens
    for name in ("latents", "x0", "eps_cond", "eps_uncond", "guidance", "sigmas"):
        assert torch.equal(getattr(again, name), getattr(run, name))
    for block in run.attention:
        assert torch.equal(again.attention[block], run.attention[block])


def test_the_tensors_of_a_run_are_declared_once_and_each_round_trips(manager, tmp_path):
    """`RUN_TENSORS` names every tensor an `ExplainRun` holds: the recorder stacks and the export saves from it."""
    held = {field.name for field in fields(ExplainRun) if "Tensor" in str(field.type) or "ndarray" in str(field.type)}
    names = [declared.name for declared in RUN_TENSORS]
    assert len(names) == len(set(names)) and set(names) == held
    image, mask = Image.new("RGB", (64, 64), "gray"), Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    request = GenerationRequest(task=Task.INPAINT, prompt="a (red:1.2) cat", negative_prompt="dog", steps=3, seed=2)
    run = explain(manager, replace(request, image=image, mask=mask, mask_blur=0))
    again = load_run(save_run(run, tmp_path / "inpaint.safetensors"))
    for declared in RUN_TENSORS:  # an inpaint run with guidance and weights holds every one
        value, loaded = getattr(run, declared.name), getattr(again, declared.name)
        assert value is not None and (len(value) > 0 if declared.per_block else True), declared.name
        pairs = [(value[b], loaded[b]) for b in value] if declared.per_block else [(value, loaded)]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs), declared.name


def test_foreign_files_are_refused_clearly(tmp_path):
    save_file({"weights": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for name in ("model.safetensors", "junk.safetensors"):
        with pytest.raises(UserError, match="Explain file"):
            load_run(tmp_path / name)


# Hostile replay files: refused from the header alone, quickly, with a message on what is wrong and no path. -------


def refused(path, match: str, limits: Limits = Limits()) -> str:
    """Assert that loading `path` is a `UserError` matching `match` within a second; its message."""
    start = time.perf_counter()
    with pytest.raises(UserError, match=match) as error:
        load_run(path, limits)
    assert time.perf_counter() - start < 1
    assert str(Path(path).parent) not in str(error.value)  # no server path
    return str(error.value)


def test_a_header_of_many_tensors_is_refused_before_any_is_built(tmp_path, no_tensor_is_built):
    metadata = export.read_header(export.save_run(synthetic_run(), tmp_path / "run.safetensors"))["__metadata__"]
    empty = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    many = {"__metadata__": metadata, **{f"t{i}": empty for i in range(15_000)}}
    # Within the header cap (~800 KB): the count is refused before any name is looked at.
    assert "15,000 tensors" in refused(write_safetensors(tmp_path / "many.safetensors", many), "at most \\d+")
    huge = {"__metadata__": metadata, **{f"t{i}": empty for i in range(120_000)}}  # ~6 MB of header
    refused(write_safetensors(tmp_path / "huge.safetensors", huge), "header is [\\d,]+ bytes")


def test_ten_thousand_words_are_refused(tmp_path, no_tensor_is_built):
    path = tmp_path / "words.safetensors"
    export.save_run(synthetic_run(tokens=10_002), path)
    assert path.stat().st_size < 300_000  # a small upload
    refused(path, "tokens must list 2 to 2464 tokens")


def test_latents_larger_than_any_model_makes_are_refused(tmp_path, no_tensor_is_built):
    path = export.save_run(synthetic_run(latent=(1, 260, 260)), tmp_path / "large.safetensors")
    refused(path, "up to 256×256")  # 1024 px at the smallest VAE factor, 4
    path = export.save_run(synthetic_run(latent=(1, 80, 80)), tmp_path / "smaller.safetensors")
    refused(path, "up to 64×64", Limits(max_size=256))


def test_too_many_steps_and_wrong_shapes_or_dtypes_are_refused(tmp_path, no_tensor_is_built):
    refused(export.save_run(synthetic_run(steps=151), tmp_path / "steps.safetensors"), "151 steps")
    run = synthetic_run()
    run.x0 = torch.zeros(1, 4, 2, 3)
    refused(export.save_run(run, tmp_path / "shape.safetensors"), "'x0' is F32 \\[1, 4, 2, 3\\]")
    run = synthetic_run()
    run.latents = run.latents.double()
    refused(export.save_run(run, tmp_path / "dtype.safetensors"), "'latents' is F64")


@pytest.mark.parametrize(
    "metadata, match",
    [
        ({"tokens": "5"}, "'tokens' is not a JSON list"),
        ({"tokens": "[1, 2, 3]"}, "tokens must list 2 to 2464 tokens"),
        ({"recipe": "[]"}, "'recipe' is not a JSON dict"),
        ({"recipe": json.dumps({"task": "txt2img", "steps": "5"})}, "recipe's 'prompt' is missing or of the wrong"),
        ({"layers": '{"mid_block": "1"}'}, "layers must name"),
        ({"layers": '{"../../etc": 1}'}, "layers must name"),
        ({"unet_calls": '"3"'}, "'unet_calls' is not a JSON int"),
        ({"first_step": "{"}, "'first_step' is not valid JSON"),
    ],
)
def test_metadata_of_the_wrong_type_is_refused_by_name(tmp_path, no_tensor_is_built, metadata, match):
    path = export.save_run(synthetic_run(), tmp_path / "run.safetensors")
    refused(edited(path, **metadata), match)


def test_a_recipe_field_of_the_wrong_type_is_refused(tmp_path, no_tensor_is_built):
    run = synthetic_run()
    run = replace(run, recipe=replace(run.recipe, steps="5"))
    refused(export.save_run(run, tmp_path / "run.safetensors"), "recipe's 'steps' is missing or of the wrong type")


def test_a_run_in_the_contract_loads_only_the_tensors_the_view_needs(tmp_path, monkeypatch):
    """The reference for the tests above: an unedited file loads, without building the averaged maps."""
    loaded, real = [], export.safe_open

    @contextmanager
    def spy(*args, **kwargs):
        with real(*args, **kwargs) as f:
            yield SimpleNamespace(get_tensor=lambda name: loaded.append(name) or f.get_tensor(name))

    monkeypatch.setattr(export, "safe_open", spy)
    run = load_run(export.save_run(synthetic_run(steps=2), tmp_path / "ok.safetensors"))
    assert run.steps == 2 and "latents" in loaded and "attention" not in loaded


def test_steps_times_tokens_times_latent_pixels_is_capped(tmp_path, monkeypatch):
    """Each bound can hold while their product (the maps the view keeps at the latent size) is too much."""
    path = export.save_run(synthetic_run(steps=2, tokens=3, latent=(4, 4, 4)), tmp_path / "run.safetensors")
    assert load_run(path).steps == 2
    monkeypatch.setattr(export, "MAX_MAP_VALUES", 2 * 4 * 16 - 1)  # steps × (tokens + padding) × pixels
    refused(path, "steps × tokens × latent size")
