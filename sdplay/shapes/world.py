"""The synthetic shapes world: grammar, scene sampling, prompts, and a renderer with per-word masks.

One object: `a {size} {color} {shape} {position} on a {background} background`.
Two objects, one in each half of the image (an opposite pair of positions, three different colours):
`a {size} {color} {shape} {position} and a {size} {color} {shape} {position} on a {background} background`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
OPPOSITE_POSITIONS = (("on the left", "on the right"), ("at the top", "at the bottom"))  # the two-object layouts
HALF_MARGIN = 0.02  # in a two-object scene each object keeps this far from its half's edges: they never touch
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
            "and",  # last, so that the words of the one-object model keep their token ids
        ]
    )
)

# What the model folder's sdplay.json says (see sdplay/runtime/catalog.py): the app applies and shows these when it
# loads.
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
        "a small red circle on the left and a small blue square on the right on a gray background",
        "a small blue circle on the left and a small red square on the right on a gray background",
    ],
    "vocabulary": list(VOCABULARY),
    "note": "Our own tiny model of coloured shapes: one or two shapes (joined by 'and', in opposite halves), words "
    "for size, colour, shape, position and background. Use CFG 3-5.",
}


MASKS = ("object 1", "object 2", "region 1", "region 2", "background")  # what a prompt word can be grounded to
TaggedWords = list[tuple[str, str | None]]  # each prompt word, and the key of MASKS it names (None: no place)


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

    @property
    def objects(self) -> tuple[Scene, ...]:
        return (self,)

    def tagged_words(self, rng: np.random.Generator | None = None, drop: float = 0.0) -> TaggedWords:
        """The grammar sentence with each word's mask; with `rng`, each phrase but the shape is left out with
        probability `drop`."""
        keep = _keeper(rng, drop)
        return self.object_words(1, keep, keep()) + _background_words(self.background, keep)

    def object_words(self, number: int, keep: Callable[[], bool], with_position: bool) -> TaggedWords:
        """`a {size} {color} {shape} {position}`, as object `number` of its scene, the size and colour if kept."""
        own, named = f"object {number}", POSITIONS[self.position][0]
        words: TaggedWords = [("a", None)]
        words += [(self.size, own)] if keep() else []
        words += [(self.color, own)] if keep() else []
        words += [(self.shape, own)]
        if with_position:
            words += [(w, f"region {number}" if w == named else None) for w in self.position.split()]
        return words

    def prompt(self, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
        return " ".join(word for word, _ in self.tagged_words(rng, drop))


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two objects in opposite halves of the image, on one background (both objects carry it)."""

    first: Scene
    second: Scene

    @property
    def objects(self) -> tuple[Scene, ...]:
        return (self.first, self.second)

    @property
    def background(self) -> str:
        return self.first.background

    def tagged_words(self, rng: np.random.Generator | None = None, drop: float = 0.0) -> TaggedWords:
        """The two-object sentence with each word's mask. Positions are always kept: they tell the objects apart."""
        keep = _keeper(rng, drop)
        first, second = self.first.object_words(1, keep, True), self.second.object_words(2, keep, True)
        return first + [("and", None)] + second + _background_words(self.background, keep)

    def prompt(self, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
        return " ".join(word for word, _ in self.tagged_words(rng, drop))


def _keeper(rng: np.random.Generator | None, drop: float) -> Callable[[], bool]:
    """Draws whether the next optional phrase stays in the prompt (always, without `rng`)."""
    return lambda: rng is None or rng.random() >= drop


def _background_words(background: str, keep: Callable[[], bool]) -> TaggedWords:
    return [("on", None), ("a", None), (background, "background"), ("background", "background")] if keep() else []


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


def sample_pair(rng: np.random.Generator) -> Pair:
    """Draw a two-object scene: an opposite pair of positions in random order, three different colours, and each
    object (size and shape drawn freely) inside its half, `HALF_MARGIN` from the half's edges."""
    layout = OPPOSITE_POSITIONS[rng.integers(len(OPPOSITE_POSITIONS))]
    positions = [str(p) for p in rng.permutation(layout)]
    colors = [str(c) for c in rng.choice(list(COLORS), 2, replace=False)]
    background = str(rng.choice([b for b in BACKGROUNDS if b not in colors]))
    objects = []
    for color, position in zip(colors, positions, strict=True):
        size, shape = str(rng.choice(list(SIZES))), str(rng.choice(SHAPES))
        low, high = SIZES[size]
        side = float(rng.uniform(low, min(high, 0.5 - 2 * HALF_MARGIN)))
        _, ax, ay = POSITIONS[position]
        cx, cy = (_place_in_half(rng, anchor, side) for anchor in (ax, ay))
        objects.append(Scene(size, color, shape, position, background, cx, cy, side))
    return Pair(*objects)


def _place_in_half(rng: np.random.Generator, anchor: float, side: float) -> float:
    """One coordinate of an object's centre in a two-object scene: around `anchor` (0.25 or 0.75) inside that half,
    or within 0.4-0.6 along the other axis (anchor 0.5)."""
    if anchor == 0.5:
        return float(np.clip(rng.uniform(0.4, 0.6), side / 2, 1 - side / 2))
    start = 0.0 if anchor < 0.5 else 0.5
    centre = anchor + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    return float(np.clip(centre, start + HALF_MARGIN + side / 2, start + 0.5 - HALF_MARGIN - side / 2))


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


def paint(scene: Scene | Pair, resolution: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render an RGB uint8 image and the boolean masks its words are grounded to, keyed as in `MASKS`.

    "object n" is where object n covers at least half a pixel, "region n" the part of the image its position phrase
    names (so "left" means the left half, wherever the object is), and "background" is where no object is.
    """
    image = np.broadcast_to(np.array(BACKGROUNDS[scene.background], float), (resolution, resolution, 3))
    masks = {}
    for number, obj in enumerate(scene.objects, start=1):
        cover = coverage(obj, resolution)
        image = image + (np.array(COLORS[obj.color], float) - image) * cover[..., None]
        masks[f"object {number}"], masks[f"region {number}"] = cover >= 0.5, region(obj.position, resolution)
    masks["background"] = ~np.logical_or.reduce([masks[f"object {n}"] for n in range(1, len(scene.objects) + 1)])
    return np.round(image).astype(np.uint8), masks


def word_masks(obj: Scene, number: int, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Object `number`'s words, each with its mask from `paint`: size, colour and shape words its object, the
    position word its region, and the background colour word and "background" the background."""
    own = masks[f"object {number}"]
    words = {w: own for w in (obj.size, obj.color, obj.shape)} | {POSITIONS[obj.position][0]: masks[f"region {number}"]}
    return words | {obj.background: masks["background"], "background": masks["background"]}


def render(scene: Scene, resolution: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render a one-object scene: an RGB uint8 image and a boolean mask per grammar word that names a region."""
    image, masks = paint(scene, resolution)
    return image, word_masks(scene, 1, masks)


def render_pair(pair: Pair, resolution: int = 64) -> tuple[np.ndarray, tuple[dict[str, np.ndarray], ...]]:
    """Render a two-object scene: the image, and each object's words with their masks (a word's own object)."""
    image, masks = paint(pair, resolution)
    return image, tuple(word_masks(obj, n, masks) for n, obj in enumerate(pair.objects, start=1))
