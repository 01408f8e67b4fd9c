"""Draw the bundled model's binding figures for its model card: two-object images with each word's attention map.

Run `python bench/shapes_figures.py [--model assets/shapes] [--out assets/shapes/binding]`. Each figure is one row:
the image, then the map of every content word (summed over all steps and layers, each word on its own min-max
scale, as the Explain view shows with "sum over steps"), through the app's own Explain capture.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sdplay.explain.capture import explain
from sdplay.explain.render import FUNCTION_WORDS, ExplainView, HeatmapSettings
from sdplay.runtime.composition import local_manager
from sdplay.runtime.request import GenerationRequest

FIGURES = {  # file name: (prompt, seed)
    "red-circle-blue-square": (
        "a small red circle on the left and a small blue square on the right on a gray background",
        1,
    ),
    "blue-circle-red-square": (
        "a small blue circle on the left and a small red square on the right on a gray background",
        1,
    ),
    "yellow-triangle-purple-circle": (
        "a large yellow triangle at the top and a small purple circle at the bottom on a black background",
        3,
    ),
}
TILE = 128  # pixels per tile: a 64x64 image at 2x
LABEL = 22  # pixels of label under each tile


def figure(view: ExplainView, steps: int) -> Image.Image:
    """The image and every content word's map summed over all steps, labelled, side by side."""
    words = [i for i, w in enumerate(view.words) if not w.special and w.text not in FUNCTION_WORDS]
    tiles = [(Image.fromarray(view.run.image).resize((TILE, TILE), Image.Resampling.NEAREST), "image")]
    for index in words:
        settings = HeatmapSettings(word=index, steps=(0, steps - 1), opacity=0.7)
        heat, _ = view.heatmap(steps - 1, settings)
        tiles.append((heat.resize((TILE, TILE), Image.Resampling.BICUBIC), view.words[index].text))
    sheet = Image.new("RGB", (len(tiles) * (TILE + 4) - 4, TILE + LABEL), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=16)
    for column, (tile, label) in enumerate(tiles):
        left = column * (TILE + 4)
        sheet.paste(tile, (left, 0))
        width = draw.textlength(label, font=font)
        draw.text((left + (TILE - width) / 2, TILE + 2), label, fill="black", font=font)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/shapes")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("assets/shapes/binding"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    manager = local_manager(device="cpu")
    manager.load(args.model)
    settings = manager.model.settings
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (prompt, seed) in FIGURES.items():
        request = GenerationRequest(
            prompt=prompt, sampler=settings.sampler, schedule=settings.schedule, steps=args.steps,
            guidance_scale=settings.guidance_scale, seed=seed,
        )  # fmt: skip
        sheet = figure(ExplainView(explain(manager, request)), args.steps)
        path = args.out / f"{name}.png"
        sheet.save(path)
        print(f"{path}: {prompt} (seed {seed})")


if __name__ == "__main__":
    main()
