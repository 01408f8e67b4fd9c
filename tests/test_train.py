"""The shapes model's training script: its grounding loss, and a tiny run from nothing that resumes and saves a model.

The real run takes hours (`python -m sdplay.shapes.train`); these take seconds and check the script still works.
"""

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdplay.shapes import train
from sdplay.shapes.world import MASKS, paint, sample_pair


def test_the_grounding_loss_pulls_each_word_to_its_own_object() -> None:
    pair = sample_pair(np.random.default_rng(0))
    _, named = paint(pair, 16)
    masks = torch.from_numpy(np.stack([named.get(key, np.zeros((16, 16), bool)) for key in MASKS]))[None].float()
    grounding = torch.zeros(1, 4, dtype=torch.long)
    grounding[0, 1] = MASKS.index("object 1") + 1  # the first object's colour word, in token slot 1

    def attention_on(mask: torch.Tensor) -> torch.Tensor:  # (1, pixels, tokens): token 1 looks at `mask` only
        probs = torch.full((1, 256, 4), 1e-6)
        probs[0, :, 1] = mask.flatten() / mask.sum()
        return probs

    own, other = masks[0, MASKS.index("object 1")], masks[0, MASKS.index("object 2")]
    on_own = train.grounding_loss([attention_on(own)], grounding, masks)
    on_other = train.grounding_loss([attention_on(other)], grounding, masks)
    uniform = train.grounding_loss([torch.full((1, 256, 4), 1 / 256)], grounding, masks)
    assert on_own.item() < 1e-3 < uniform.item() < on_other.item()


@pytest.mark.usefixtures("torch_threads_kept")
def test_a_tiny_run_trains_resumes_and_saves_a_model(tmp_path, capsys) -> None:
    tiny = [
        f"--out_dir={tmp_path / 'run'}", f"--final_dir={tmp_path / 'model'}", "--num_scenes=16", "--num_pairs=16",
        "--vae_steps=2", "--vae_batch=4", "--unet_batch=4", "--threads=1", "--warmup_steps=1",
    ]  # fmt: skip
    timings = train.main([*tiny, "--unet_steps=2"])
    assert list(timings) == ["render", "vae", "latents", "unet", "save"] and min(timings.values()) > 0
    train.main([*tiny, "--unet_steps=3"])  # resumes from the checkpoint the first run's last step wrote
    out = capsys.readouterr().out
    assert "starting at phase unet, step 2" in out and re.search(r"^unet: \d+\.\d s$", out, re.MULTILINE)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert len(pipe.tokenizer("and", add_special_tokens=False).input_ids) == 1
    assert (tmp_path / "model" / "sdplay.json").exists()
    image = pipe("a red circle and a blue square", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    # Fine-tuning starts from the saved model's weights (and keeps its latent scale).
    tuned = [*tiny[2:], f"--out_dir={tmp_path / 'tune'}", f"--final_dir={tmp_path / 'tuned'}", "--unet_steps=1"]
    train.main([*tuned, f"--init_from={tmp_path / 'model'}", "--vae_steps=0"])
    assert "fine-tuning" in capsys.readouterr().out
    tuned_vae = StableDiffusionPipeline.from_pretrained(tmp_path / "tuned", local_files_only=True).vae
    assert tuned_vae.config.scaling_factor == pipe.vae.config.scaling_factor
    assert all(torch.equal(a, b) for a, b in zip(tuned_vae.parameters(), pipe.vae.parameters(), strict=True))
