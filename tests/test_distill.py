"""The distillation script: its schedule arithmetic, and a tiny run that resumes exactly and saves a 4-step LCM model
that the app loads.

The real run takes hours (`python -m sdplay.shapes.distill`); these take seconds and check the script still works.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from sdplay.runtime.composition import local_manager
from sdplay.runtime.generate import generate
from sdplay.runtime.metadata import parse_infotext
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.shapes import distill, train
from tests.helpers import same_weights


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_the_schedule_reads_outputs_steps_and_denoises_as_the_schedulers_do(prediction_type) -> None:
    config = train.SCHEDULER_CONFIG | {"prediction_type": prediction_type}
    schedule = distill.ConsistencySchedule(config, ddim_steps=50)
    assert schedule.skip == 20 and schedule.timesteps[0] == 19 and schedule.timesteps[-1] == 999
    lcm = LCMScheduler.from_config(schedule.lcm.config)
    lcm.set_timesteps(4)
    assert set(lcm.timesteps.tolist()) <= set(schedule.timesteps.tolist())  # sampling visits trained timesteps

    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([499, 499])
    x_t = schedule.noised(x0, eps, t)
    # The exact output of a perfect model, as diffusers defines v.
    output = DDPMScheduler(**config).get_velocity(x0, eps, t) if prediction_type == "v_prediction" else eps
    got_x0, got_eps = schedule.split(output, x_t, t)
    assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, eps, atol=1e-4)
    # A DDIM step on a perfect prediction stays on the trajectory.
    assert torch.allclose(schedule.noised(got_x0, got_eps, t - 20), schedule.noised(x0, eps, t - 20), atol=1e-4)
    # f is what LCMScheduler's step denoises to, and the identity at t = 0.
    denoised = lcm.step(output, 499, x_t).denoised
    assert torch.allclose(schedule.consistency(output, x_t, t), denoised, atol=1e-5)
    zero = torch.zeros(2, dtype=torch.long)
    assert torch.allclose(schedule.consistency(torch.randn_like(x_t), x_t, zero), x_t)


def unet_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet-lcm" / "diffusion_pytorch_model.safetensors")


@pytest.mark.usefixtures("torch_threads_kept")
def test_a_tiny_distillation_resumes_exactly_and_saves_a_4_step_lcm_model(tmp_path, tiny_model, capsys) -> None:
    teacher = tmp_path / "teacher"  # the tiny random model, with the shapes model's v-prediction schedule
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler(timestep_spacing="trailing", **train.SCHEDULER_CONFIG)
    pipe.save_pretrained(teacher)
    tiny = [f"--teacher={teacher}", "--num_scenes=8", "--num_pairs=8", "--batch=2", "--threads=1", "--warmup_steps=1"]

    def run(name: str, steps: int) -> dict[str, float]:
        out = [f"--out_dir={tmp_path / name}", f"--final_dir={tmp_path / name}-model", f"--steps={steps}"]
        return distill.main([*tiny, "--guidance_dim=8", *out])

    timings = run("a", 2)
    assert list(timings) == ["render", "latents", "distill", "save"] and min(timings.values()) > 0
    run("a", 3)  # resumes from the checkpoint the first run's last step wrote
    with pytest.raises(SystemExit, match="at step 3, past --steps=2"):
        run("a", 2)  # would save the 3-step student as a 2-step one
    out = capsys.readouterr().out
    assert "starting at step 2 of 3" in out and re.search(r"^distill: \d+\.\d s$", out, re.MULTILINE)
    assert re.search(r"wall time over all sessions of this run: \d+\.\d min", out)
    run("b", 3)  # the same three steps in one go: a resumed run draws exactly what an uninterrupted one does
    resumed, straight = unet_weights(tmp_path / "a-model"), unet_weights(tmp_path / "b-model")
    assert all(torch.equal(resumed[key], straight[key]) for key in straight)
    assert resumed["time_embedding.cond_proj.weight"].abs().max() > 0  # the guidance input has been trained
    assert not torch.equal(resumed["conv_out.weight"], pipe.unet.state_dict()["conv_out.weight"])

    settings = json.loads((tmp_path / "a-model" / "sdplay.json").read_text())
    assert settings["fast"] == {"unet": "unet-lcm", "steps": 4, "guidance_scale": 4.0}
    assert "triangle" in settings["vocabulary"] and settings["examples"]
    assert (
        unet_weights(tmp_path / "a-model").keys()
        != load_file(teacher / "unet" / "diffusion_pytorch_model.safetensors").keys()
    )

    manager = local_manager(device="cpu")
    model = manager.load(str(tmp_path / "a-model"))  # the teacher, with the student as its fast path
    assert model.allows_lcm and model.fast_unet is not None and model.pipe.unet.config.time_cond_proj_dim is None
    assert model.settings.generation.sampler == "LCM" and model.settings.sampler != "LCM"
    assert same_weights(manager.pipeline(Task.TXT2IMG, "LCM").unet, model.fast_unet)
    assert same_weights(manager.pipeline(Task.TXT2IMG, "Euler").unet, model.pipe.unet)
    request = GenerationRequest(prompt="a red circle", sampler="LCM", steps=4, guidance_scale=4.0, seed=7)
    first, again = generate(manager, request), generate(manager, request)
    other = generate(manager, dataclasses.replace(request, seed=8))
    pixels = [np.asarray(result.images[0]) for result in (first, again, other)]
    assert pixels[0].shape == (64, 64, 3)
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    params = parse_infotext(first.infotexts[0]).params
    assert (params["Sampler"], params["Steps"], params["CFG scale"]) == ("LCM", "4", "4")
