"""The bundled model's training time from nothing (issue 13: ≤ 240 minutes on this 2-core machine; with its 4-step
distillation, issue 21: ≤ 300), projected from short runs of `python -m sdplay.shapes.train` and
`python -m sdplay.shapes.distill` with the default configs but few steps.

The short run renders the full data set, trains the VAE and the UNet for a few steps each, caches the latents and
saves the model, timing each phase (`train.main`'s timings); the projection adds the default number of steps at the
measured rate of each training phase. Rates are steady: every step has the same batch and shapes (the first steps
and checkpoint saves weigh a little more in a short run, so the projection errs long).
The distillation's short run distils the committed model (its teacher, assets/shapes) in a temporary folder: its own
rendering and latents, then `--distill_steps` steps at the default batch.
Run `python bench/train_time.py [--vae_steps 150] [--unet_steps 100] [--distill_steps 30]` on a quiet machine;
`--no-write` for a trial.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402

from sdplay.shapes import distill, train  # noqa: E402

BAR_MINUTES = 240.0
WITH_DISTILLATION_BAR_MINUTES = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae_steps", type=int, default=150)
    parser.add_argument("--unet_steps", type=int, default=100)
    parser.add_argument("--distill_steps", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args()
    load_before = results.cpu_load()
    defaults = train.Config()
    with tempfile.TemporaryDirectory(prefix="sdplay-train-time-") as folder:
        timings = train.main(
            [f"--out_dir={folder}/run", f"--final_dir={folder}/model"]
            + [f"--vae_steps={args.vae_steps}", f"--unet_steps={args.unet_steps}"]
        )
        lcd = distill.main(
            [f"--out_dir={folder}/distill", f"--final_dir={folder}/fast", f"--steps={args.distill_steps}"]
        )
    lcd_defaults = distill.Config()
    lcd_rate = lcd["distill"] / args.distill_steps
    lcd_total = lcd["render"] + lcd["latents"] + lcd["save"] + lcd_rate * lcd_defaults.steps
    vae_rate, unet_rate = timings["vae"] / args.vae_steps, timings["unet"] / args.unet_steps
    fixed = timings["render"] + timings["latents"] + timings["save"]
    vae_total, unet_total = vae_rate * defaults.vae_steps, unet_rate * defaults.unet_steps
    minutes = (fixed + vae_total + unet_total) / 60
    met = "met" if minutes <= BAR_MINUTES else "MISSED"
    both = minutes + lcd_total / 60
    both_met = "met" if both <= WITH_DISTILLATION_BAR_MINUTES else "MISSED"
    report = "\n".join(
        [
            "| phase | measured | steps measured | s per step | default steps | projected, min |",
            "|---|---|---|---|---|---|",
            f"| render the data ({defaults.num_scenes} + {defaults.num_pairs} scenes), build | "
            f"{timings['render']:.1f} s | | | | {timings['render'] / 60:.1f} |",
            f"| VAE | {timings['vae']:.1f} s | {args.vae_steps} | {vae_rate:.3f} | {defaults.vae_steps} | "
            f"{vae_total / 60:.1f} |",
            f"| cache the latents, VAE round trip | {timings['latents']:.1f} s | | | | {timings['latents'] / 60:.1f} |",
            f"| text encoder + UNet | {timings['unet']:.1f} s | {args.unet_steps} | {unet_rate:.3f} | "
            f"{defaults.unet_steps} | {unet_total / 60:.1f} |",
            f"| save the model | {timings['save']:.1f} s | | | | {timings['save'] / 60:.1f} |",
            f"| distillation: render, cache the latents, save | "
            f"{lcd['render'] + lcd['latents'] + lcd['save']:.1f} s | | | | "
            f"{(lcd['render'] + lcd['latents'] + lcd['save']) / 60:.1f} |",
            f"| distillation: student + teacher + target | {lcd['distill']:.1f} s | {args.distill_steps} | "
            f"{lcd_rate:.3f} | {lcd_defaults.steps} | {lcd_rate * lcd_defaults.steps / 60:.1f} |",
            "",
            f"- From nothing, default config (`python -m sdplay.shapes.train`, {defaults.threads} threads): "
            f"**{minutes:.0f} min** projected (bar ≤ {BAR_MINUTES:.0f} min: {met})",
            f"- With the 4-step distillation (`python -m sdplay.shapes.distill`, {lcd_defaults.threads} threads): "
            f"**{both:.0f} min** projected (bar ≤ {WITH_DISTILLATION_BAR_MINUTES:.0f} min: {both_met})",
            f"- CPU load before: {load_before}",
            f"- CPU load after: {results.cpu_load()}",
        ]
    )
    print(report)
    if not args.no_write:
        results.write_section("Bundled model: training time from nothing", report)


if __name__ == "__main__":
    main()
