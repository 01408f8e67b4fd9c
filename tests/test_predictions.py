"""x̂₀ and the guidance split seen from the UNet: checked against the schedulers' own predictions."""

import torch

from sdplay.runtime.predictions import Prediction, alpha_bar_at, watch_predictions
from sdplay.runtime.request import Task


def run_with_watch(manager, sampler: str, steps: int, guidance: float = 5.0):
    pipe = manager.pipeline(Task.TXT2IMG, sampler)
    predictions: list[Prediction] = []
    originals: list[torch.Tensor] = []
    step = pipe.scheduler.step

    def recording_step(*args, **kwargs):
        output = step(*args, **kwargs)
        # The pipeline asks for a tuple: (prev_sample, pred_original_sample) for the schedulers tested here.
        originals.append(output[1] if isinstance(output, tuple) else output.pred_original_sample)
        return output

    pipe.scheduler.step = recording_step
    with watch_predictions(pipe, predictions.append):
        pipe(
            "a red cat", num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(0)
        )
    return pipe, predictions, originals


def test_x0_matches_the_schedulers_own_prediction(manager):
    for sampler in ("DDIM", "Euler", "Euler a"):
        _, predictions, originals = run_with_watch(manager, sampler, steps=6)
        assert len(predictions) == 6
        for prediction, original in zip(predictions, originals, strict=True):
            # Euler-type samplers work in σ-scaled latents: x̂₀ is the same in both parameterisations.
            torch.testing.assert_close(prediction.x0, original.float(), atol=1e-4, rtol=1e-4)


def test_guidance_split_recombines_into_the_guided_noise(manager):
    _, predictions, _ = run_with_watch(manager, "DDIM", steps=3, guidance=7.5)
    for p in predictions:
        torch.testing.assert_close(p.eps, p.eps_uncond + 7.5 * (p.eps_cond - p.eps_uncond))
    _, unguided, _ = run_with_watch(manager, "DDIM", steps=3, guidance=1.0)
    assert all(p.eps_uncond is None for p in unguided)


def test_heun_counts_unet_calls_not_steps(manager):
    _, predictions, _ = run_with_watch(manager, "Heun", steps=4)
    assert [p.call for p in predictions] == list(range(len(predictions)))
    assert len(predictions) == 2 * 4 - 1  # the last step has no correction


def test_alpha_bar_interpolates_between_integer_timesteps():
    alphas = torch.linspace(0.99, 0.01, 1000)
    assert abs(alpha_bar_at(alphas, 10) - 0.99 + 10 * 0.98 / 999) < 1e-5
    assert alpha_bar_at(alphas, 10) > alpha_bar_at(alphas, 10.5) > alpha_bar_at(alphas, 11)
