"""The Inside tab's UNet views against independent computations: forward hooks during the real run, the UNet's own
parameters, torch's FLOP counter on its math attention kernel, and the skip tensors the up blocks actually read."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sdplay.explain.capture import explain
from sdplay.inside.unet import (
    DIAGRAM_SIZE,
    MOSAIC_CHANNELS,
    UNetRequest,
    activation_chart,
    block_tiles,
    diagram,
    first_convolution,
    look_inside,
    skip_connections,
    unet_parts,
)
from sdplay.inside.unet_step import call_unet, first_call, step_input
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import Executor, JobControl, JobSpec
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Limits
from tests.helpers import running_unet
from tests.zero_gpu import ZeroGPU

REQUEST = GenerationRequest(prompt="a red cat", negative_prompt="dog", sampler="Euler", steps=4, seed=3)
OURS = ("sdplay.inside.unet_step", "sdplay.inside.unet", "sdplay.inside.attention")


def outputs_of_every_call(manager: ModelManager, request: GenerationRequest, modules: dict[str, torch.nn.Module]):
    """Run Explain with forward hooks of our own on `modules` (and the UNet): each one's output at every UNet call."""
    unet = running_unet(manager)  # the UNet explain() runs on this thread
    calls: list[dict[str, torch.Tensor]] = []

    def keep(name: str):
        def hook(module, args, output) -> None:
            output = output[0] if isinstance(output, tuple) else output  # down blocks also return their skips
            calls[-1][name] = output.detach().float().clone()

        return hook

    starts = unet.register_forward_pre_hook(lambda module, args: calls.append({}))
    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    handles.append(unet.register_forward_hook(lambda module, args, output: calls[-1].update(out=output[0].float())))
    try:
        run = explain(manager, request)
    finally:
        starts.remove()
        for handle in handles:
            handle.remove()
    return run, calls


@pytest.mark.parametrize(
    "request_",
    [
        REQUEST,
        GenerationRequest(prompt="a [red:dog:2] cat", negative_prompt="dog", sampler="DPM++ 2M", steps=4, seed=3),
        GenerationRequest(prompt="a red cat", sampler="Heun", steps=3, seed=3),
        GenerationRequest(prompt="a red cat", sampler="PLMS", steps=3, seed=3),
        GenerationRequest(prompt="a red cat", sampler="Euler", steps=3, seed=3, guidance_scale=1),
    ],
    ids=["euler", "prompt-editing", "heun", "plms", "no-guidance"],
)
def test_one_unet_call_at_a_step_reproduces_the_runs_call(manager, request_):
    """The UNet's output at the call that began each step, hooked during the run itself, is what one call on the
    recorded x_t and timestep gives (prompt editing: the prompt of that call); single-call samplers record it."""
    run, calls = outputs_of_every_call(manager, request_, {})
    assert len(calls) == run.unet_calls
    pipe = manager.model.pipe
    for step in range(run.steps):
        output = call_unet(pipe, step_input(run, step))
        hooked = calls[first_call(run, step)]["out"]
        expected = [hooked[1], hooked[0]] if output.batch == 2 else [hooked[0], None]
        torch.testing.assert_close(output.eps_cond, expected[0], atol=1e-6, rtol=0)
        if output.batch == 2:
            torch.testing.assert_close(output.eps_uncond, expected[1], atol=1e-6, rtol=0)
        if run.unet_calls == run.steps:  # one call a step: that call's prediction is the recorded one
            assert torch.equal(output.eps_cond, run.eps_cond[step])


def test_feature_maps_equal_a_forward_hook_at_each_block(shapes):
    unet = running_unet(shapes)
    request = GenerationRequest(prompt="a large red circle on the left", sampler="Euler", steps=5, seed=1)
    watched = {name: module for name, module in unet_parts(unet) if name.startswith(("conv_in", "down", "mid", "up"))}
    run, calls = outputs_of_every_call(shapes, request, watched)
    step = 3
    inside = look_inside(shapes, UNetRequest(step_input(run, step)))
    assert set(inside.features) == {*watched, "conv_out"}
    for name in watched:
        hooked = calls[step][name][1]  # the prompt's image of the batch [negative, prompt]
        features = inside.features[name]
        assert len(features.channels) == min(MOSAIC_CHANNELS, hooked.shape[0])
        torch.testing.assert_close(features.maps, hooked[features.channels], atol=1e-6, rtol=0)
        torch.testing.assert_close(features.mean, hooked.mean(0), atol=1e-6, rtol=0)
        assert features.mean_activation == pytest.approx(float(hooked.mean()), abs=1e-6)
        # The kept channels are those that vary most over the image.
        spread = hooked.flatten(1).std(1)
        assert spread[features.channels].min() >= spread.sort(descending=True).values[len(features.channels) - 1]
    # conv_out's output is the prompt's prediction: all 4 channels.
    torch.testing.assert_close(inside.features["conv_out"].maps, run.eps_cond[step], atol=1e-6, rtol=0)
    # The first convolution's kernels are its weights for the kept channels.
    kept = inside.features["conv_in"].channels
    assert torch.equal(inside.kernels, unet.conv_in.weight[kept].detach())
    assert torch.equal(inside.latents, run.latents[step])


@pytest.mark.parametrize("model", ["tiny", "shapes"])
def test_diagram_parameter_counts_sum_to_the_models(manager, shapes, model):
    chosen = manager if model == "tiny" else shapes
    unet = chosen.model.pipe.unet
    run = explain(chosen, GenerationRequest(prompt="a red cat", sampler="Euler", steps=2, seed=1))
    inside = look_inside(chosen, UNetRequest(step_input(run, 1)))
    assert inside.parameters == sum(p.numel() for p in unet.parameters())
    for part in inside.parts:
        module = unet.get_submodule(part.name)
        assert part.parameters == sum(p.numel() for p in module.parameters())
    names = [part.name for part in inside.parts if part.on_path]
    blocks = len(unet.down_blocks)
    assert names[: blocks + 2] == ["conv_in", *(f"down_blocks.{i}" for i in range(blocks)), "mid_block"]
    assert diagram(inside, chosen.model.name).size == DIAGRAM_SIZE


def test_flops_count_attention_as_the_math_kernel_does(shapes):
    """Reference: torch's own counter on the UNet with the math attention kernel, which multiplies q·kᵀ and the
    softmax with v as plain matrix products (its fast CPU kernel is not counted by torch)."""
    run = explain(shapes, GenerationRequest(prompt="a red circle", sampler="Euler", steps=2, seed=1, guidance_scale=4))
    request = step_input(run, 1)
    inside = look_inside(shapes, UNetRequest(request))
    pipe = shapes.model.pipe
    with FlopCounterMode(display=False) as reference, sdpa_kernel(SDPBackend.MATH):
        call_unet(pipe, request)
    unet_flops = sum(reference.get_flop_counts()[type(pipe.unet).__name__].values())  # not the text encoder's
    assert inside.flops == unet_flops // 2  # per image: the call's batch holds 2 (CFG)
    conv_in = next(part for part in inside.parts if part.name == "conv_in")
    out_channels, in_channels, kh, kw = pipe.unet.conv_in.weight.shape
    h, w = run.latents.shape[-2:]
    assert conv_in.flops == 2 * h * w * out_channels * in_channels * kh * kw
    attention = sum(part.flops for part in inside.parts if "CrossAttn" in part.kind)
    assert attention > 0 and inside.flops > attention


def test_skip_connections_are_the_tensors_the_up_blocks_read(shapes):
    """Reference: who made each tensor that each up block receives as `res_hidden_states_tuple`."""
    unet = running_unet(shapes)
    made: dict[int, str] = {}
    read: dict[str, Counter] = {}

    def producer(name: str):
        def hook(module, args, output) -> None:
            for tensor in output[1] if isinstance(output, tuple) else (output,):
                made[tensor.data_ptr()] = name

        return hook

    def consumer(name: str):
        def hook(module, args, kwargs) -> None:
            read[name] = Counter(made[tensor.data_ptr()] for tensor in kwargs["res_hidden_states_tuple"])

        return hook

    handles = [unet.conv_in.register_forward_hook(producer("conv_in"))]
    handles += [b.register_forward_hook(producer(f"down_blocks.{i}")) for i, b in enumerate(unet.down_blocks)]
    handles += [
        b.register_forward_pre_hook(consumer(f"up_blocks.{i}"), with_kwargs=True) for i, b in enumerate(unet.up_blocks)
    ]
    try:
        run = explain(shapes, GenerationRequest(prompt="a red circle", sampler="Euler", steps=1, seed=1))
    finally:
        for handle in handles:
            handle.remove()
    assert {name: dict(counts) for name, counts in read.items()} == skip_connections(unet)
    inside = look_inside(shapes, UNetRequest(step_input(run, 0)))
    assert {p.name: p.skips for p in inside.parts if p.skips} == skip_connections(unet)


def test_pictures_show_every_block_and_the_kept_kernels(shapes):
    run = explain(shapes, GenerationRequest(prompt="a red circle", sampler="Euler", steps=2, seed=1))
    inside = look_inside(shapes, UNetRequest(step_input(run, 0)))
    tiles = block_tiles(inside)
    assert [label.split(" · ")[0] for _, label in tiles] == [
        "conv in",
        *(f"down {i}" for i in range(4)),
        "mid",
        *(f"up {i}" for i in range(4)),
        "conv out",
    ]
    picture = np.asarray(first_convolution(inside))
    assert picture.shape[1] >= 4 * 120 and len(inside.kernels) == MOSAIC_CHANNELS
    assert activation_chart(inside).height > 34 * len(tiles)


def test_a_run_of_another_model_is_refused_clearly(manager, shapes):
    run = explain(manager, GenerationRequest(prompt="a red cat", sampler="Euler", steps=2, seed=1))
    with pytest.raises(UserError, match=r"made by tiny, and the loaded model is shapes: load tiny") as error:
        look_inside(shapes, UNetRequest(step_input(run, 0)))
    assert "/" not in str(error.value)
    with pytest.raises(UserError, match="steps 1 to 2: there is no step 3"):
        step_input(run, 2)


def test_a_normal_explain_run_meets_none_of_our_hooks(shapes):
    """The views run only when asked: during a normal Explain run no hook or processor of theirs is attached, and
    no global module hook (FlopCounterMode's) either. The same inspection, made while a view runs, finds them."""
    unet = running_unet(shapes)  # what both run on this thread
    seen: list[str] = []

    def inspect(*_) -> None:
        hooks = [
            *torch.nn.modules.module._global_forward_hooks.values(),
            *torch.nn.modules.module._global_forward_pre_hooks.values(),
        ]
        seen.extend("global hook" for _ in hooks)
        for module in unet.modules():
            hooks += [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        seen.extend(getattr(hook, "__module__", "") for hook in hooks)
        seen.extend(type(p).__module__ for p in unet.attn_processors.values())

    request = GenerationRequest(prompt="a red circle", sampler="Euler", steps=4, seed=1)
    run = explain(shapes, request, control=JobControl(on_step=inspect))
    assert seen and not any(module in OURS or module == "global hook" for module in seen)

    seen.clear()
    handle = unet.mid_block.register_forward_hook(inspect)  # inspects while the view's UNet call runs
    try:
        look_inside(shapes, UNetRequest(step_input(run, 2)))
    finally:
        handle.remove()
    assert "sdplay.inside.unet" in seen and "global hook" in seen

    seen.clear()
    explain(shapes, request, control=JobControl(on_step=inspect))  # the view left nothing behind
    assert seen and not any(module in OURS or module == "global hook" for module in seen)


def test_the_view_crosses_a_zerogpu_boundary_as_picklable_cpu_data(manager):
    """Under a simulation of ZeroGPU (a forked worker, everything pickled both ways) the job gives what it gives
    in this process."""
    run = explain(manager, REQUEST)
    job = JobSpec(look_inside, UNetRequest(step_input(run, 2)), Limits())
    *_, local = manager.executor.run(job)
    zero_gpu = ZeroGPU()
    *_, remote = Executor(manager, gpu=zero_gpu).run(job)
    assert len(zero_gpu.workers) == 1  # it ran in a forked worker
    assert remote.parts == local.parts and remote.features.keys() == local.features.keys()
    for name, features in local.features.items():
        assert torch.equal(remote.features[name].maps, features.maps)
    assert torch.equal(remote.output.eps_cond, run.eps_cond[2]) and torch.equal(remote.kernels, local.kernels)
