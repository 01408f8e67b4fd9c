"""The synthetic shapes world: grammar, scene sampling, prompts, and a renderer with per-word masks.

One object per image: `a {size} {color} {shape} {position} on a {background} background`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SIZES = {
    "small": (0.22, 0.32),
    "large": (0.45, 0.60),
}  # bounding-box side as a fraction of the width
COLORS = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
BACKGROUNDS = {**COLORS, "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {  # phrase -> (word that names it, anchor centre x, anchor centre y)
    "on the left": ("left", 0.25, 0.5),
    "on the right": ("right", 0.75, 0.5),
    "at the top": ("top", 0.5, 0.25),
    "at the bottom": ("bottom", 0.5, 0.75),
    "in the center": ("center", 0.5, 0.5),
}
POSITION_JITTER = 0.05  # anchors move by up to this much; the other coordinate stays within 0.4-0.6
VOCABULARY = tuple(
    dict.fromkeys(
        [
            "a",
            "on",
            "background",
            *SIZES,
            *BACKGROUNDS,
            *SHAPES,
            *(w for p in POSITIONS for w in p.split()),
        ]
    )
)

# What the model folder's sdplay.json says (see sdplay/catalog.py): the app applies and shows these when it loads.
RECOMMENDED_SETTINGS = {
    "sampler": "DPM++ 2M",
    "schedule": "Uniform",  # the saved scheduler's own trailing spacing, as the evaluation ran it
    "steps": 20,
    "guidance_scale": 4.0,  # the middle of the model card's 3-5: more guidance makes squares pincushion
    "examples": [
        "a large red circle on the left on a gray background",
        "a small blue triangle at the top on a yellow background",
        "a large white square in the center on a black background",
        "a small orange circle at the bottom on a purple background",
    ],
    "vocabulary": list(VOCABULARY),
    "note": "Our own tiny model of coloured shapes: one shape, one of its words for each of size, colour, shape, "
    "position and background. Use CFG 3-5.",
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One object on a plain background; geometry is in fractions of the image side."""

    size: str
    color: str
    shape: str
    position: str
    background: str
    cx: float
    cy: float
    side: float

    def prompt(self, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
        """The grammar sentence; with `rng`, each phrase but the shape is left out with probability `drop`."""

        def keep() -> bool:
            return rng is None or rng.random() >= drop

        words = ["a"]
        words += [self.size] if keep() else []
        words += [self.color] if keep() else []
        words += [self.shape]
        words += [self.position] if keep() else []
        words += [f"on a {self.background} background"] if keep() else []
        return " ".join(words)


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene uniformly over the grammar, with placement jitter as the grammar specifies."""
    size = str(rng.choice(list(SIZES)))
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    position = str(rng.choice(list(POSITIONS)))
    background = str(rng.choice([b for b in BACKGROUNDS if b != color]))
    side = rng.uniform(*SIZES[size])
    _, ax, ay = POSITIONS[position]
    cx, cy = (
        rng.uniform(0.4, 0.6) if a == 0.5 else a + rng.uniform(-POSITION_JITTER, POSITION_JITTER) for a in (ax, ay)
    )
    # Keep the whole object inside the image, so its outline (and thus its shape) stays measurable.
    cx, cy = (float(np.clip(c, side / 2, 1 - side / 2)) for c in (cx, cy))
    return Scene(size, color, shape, position, background, cx, cy, float(side))


def coverage(scene: Scene, resolution: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the object, from a supersampled inside test (anti-aliased edges)."""
    n = resolution * supersample
    y, x = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    dx, dy, half = x - scene.cx, y - scene.cy, scene.side / 2
    if scene.shape == "circle":
        inside = dx**2 + dy**2 <= half**2
    elif scene.shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # upward triangle: the half-width grows linearly from the apex to the base
        inside = (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    return inside.reshape(resolution, supersample, resolution, supersample).mean(axis=(1, 3))


def region(position: str, resolution: int) -> np.ndarray:
    """The part of the image a position phrase names: a half for left/right/top/bottom, the middle for center."""
    centre = (np.arange(resolution) + 0.5) / resolution
    y, x = np.meshgrid(centre, centre, indexing="ij")
    word, ax, ay = POSITIONS[position]
    if word == "center":
        return (np.abs(x - 0.5) < 0.25) & (np.abs(y - 0.5) < 0.25)
    return (x - 0.5) * (ax - 0.5) + (y - 0.5) * (ay - 0.5) > 0  # the half on the anchor's side of the middle


def render(scene: Scene, resolution: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render an RGB uint8 image and a boolean mask per grammar word that names a region.

    Size, colour and shape words map to the object, the position word to the region it names (so "left" means
    the left half, wherever the object is), and the background colour word and "background" to the rest.
    An object mask pixel is set where the object covers at least half of it.
    """
    cover = coverage(scene, resolution)
    fg, bg = (
        np.array(COLORS[scene.color], float),
        np.array(BACKGROUNDS[scene.background], float),
    )
    image = np.round(bg + (fg - bg) * cover[..., None]).astype(np.uint8)
    obj = cover >= 0.5
    masks = {w: obj for w in (scene.size, scene.color, scene.shape)}
    masks[POSITIONS[scene.position][0]] = region(scene.position, resolution)
    return image, masks | {scene.background: ~obj, "background": ~obj}
