"""Reading a generated shapes image back: segment it by colour, name what it shows, score attention maps.

Shared by the evaluation script (bench/shapes_eval.py) and the tests of the model and of the Explain view.
"""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from sdplay.shapes.world import BACKGROUNDS, COLORS, POSITIONS, SIZES

OBJECT_DISTANCE = 60.0  # RGB distance from the border colour above which a pixel belongs to the object
SIZE_THRESHOLD = (SIZES["small"][1] + SIZES["large"][0]) / 2  # between the two size ranges
DAAM_THRESHOLD = 0.4  # DAAM's threshold on min-max normalised maps
MIN_OBJECT_PIXELS = 12  # smaller parts of the foreground are specks, not objects (a small triangle has ~100 pixels)


@dataclasses.dataclass
class Measured:
    """What the segmentation reads from one generated image."""

    color: str | None
    background: str
    shape: str | None
    size: str | None
    position: str | None
    mask: np.ndarray


def nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: np.linalg.norm(rgb - np.array(palette[name])))


def measure(image: np.ndarray) -> Measured:
    """Segment by colour: the border's colour is the background, pixels far from it are the object."""
    background_rgb = border_colour(image)
    mask = np.linalg.norm(image.astype(float) - background_rgb, axis=-1) > OBJECT_DISTANCE
    return describe(image, mask, nearest(background_rgb, BACKGROUNDS))


def border_colour(image: np.ndarray) -> np.ndarray:
    """The median colour of the two-pixel frame around the image: the background's, as no object touches it."""
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3), image[:, :2].reshape(-1, 3)])
    return np.median(np.concatenate([border, image[:, -2:].reshape(-1, 3)]).astype(float), axis=0)


def describe(image: np.ndarray, mask: np.ndarray, background: str) -> Measured:
    """Name the object that `mask` covers: its colour, its shape from how much of its bounding box it fills, its
    size from the box's longer side, and the position nearest to the box's centre."""
    h, w, _ = image.shape
    if mask.sum() < 4:
        return Measured(None, background, None, None, None, mask)
    ys, xs = np.nonzero(mask)
    box_w, box_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = mask.sum() / (box_w * box_h)  # square 1, circle pi/4, triangle 1/2
    shape = "square" if fill > 0.89 else "circle" if fill > 0.64 else "triangle"
    size = "small" if max(box_w, box_h) / w < SIZE_THRESHOLD else "large"
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][1] - cx) ** 2 + (POSITIONS[p][2] - cy) ** 2)
    color = nearest(np.median(image[mask].astype(float), axis=0), COLORS)
    return Measured(color, background, shape, size, position, mask)


def measure_objects(image: np.ndarray) -> list[Measured]:
    """Segment an image with any number of objects: each 4-connected part of the pixels far from the background
    colour that has at least `MIN_OBJECT_PIXELS` is one object, largest first."""
    background_rgb = border_colour(image)
    foreground = np.linalg.norm(image.astype(float) - background_rgb, axis=-1) > OBJECT_DISTANCE
    background = nearest(background_rgb, BACKGROUNDS)
    parts = [part for part in components(foreground) if part.sum() >= MIN_OBJECT_PIXELS]
    return [describe(image, part, background) for part in parts]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean mask, largest first (a flood fill: images here are 64x64)."""
    labels = np.zeros(mask.shape, dtype=int)
    h, w = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label = labels.max() + 1
        labels[start], stack = label, [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
    return sorted((labels == label for label in range(1, labels.max() + 1)), key=lambda part: -part.sum())


def daam_iou(heatmap: torch.Tensor, mask: np.ndarray) -> float:
    """DAAM's protocol: upsample the map bicubically to the image, min-max normalise it, threshold it at 0.4,
    and take the IoU with the object mask."""
    heat = F.interpolate(heatmap[None, None].float(), size=mask.shape, mode="bicubic", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
    predicted = (heat >= DAAM_THRESHOLD).numpy()
    return float((predicted & mask).sum() / max(1, (predicted | mask).sum()))
