"""The X/Y/Z plot: axes of values in A1111's syntax, the cells they make, running them one job each, and the grid.

Plain logic, no Gradio: sdplay/xyz/ui.py streams `run_cells` into the tab; every cell is one ordinary `generate` job.
"""

import csv
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec
from sdplay.runtime.generate import GenerationResult, StepUpdate, generate
from sdplay.runtime.images import fit_within, open_image
from sdplay.runtime.metadata import format_infotext
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import MAX_SEED, GenerationRequest, Limits, PlotLimits, Task, validated
from sdplay.runtime.samplers import AUTOMATIC

RECIPE_KEY = "sdplay_xyz"  # the grid PNG's text chunk with the plot's recipe (JSON)
NOTHING = "Nothing"
# The request fields a plot's recipe records (inpainting's are not a plot's; the start image is a server file).
PLOT_FIELDS = (
    "task", "prompt", "negative_prompt", "sampler", "schedule", "steps", "guidance_scale", "seed", "width", "height",
    "batch_size", "strength",
)  # fmt: skip

# A1111's range syntax (scripts/xyz_grid.py): "1-5", "1-5 (+2)" (a step), "1-5 [3]" (a count, both ends included).
_NUMBER = r"([+-]?\s*\d+(?:\.\d*)?)"
_STEP_RANGE = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}(?:\s*\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\))?\s*")
_COUNT_RANGE = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\[\s*(\d+)\s*\]\s*")


@dataclass(frozen=True)
class AxisType:
    """A kind of axis: how its values parse (`int`, `float` or `str`) and how a value applies to a request.

    `label` True writes "Steps: 20" on the grid (numbers); False writes the value alone (names, prompt words).
    """

    name: str
    kind: type
    apply: Callable[[GenerationRequest, Any], GenerationRequest]
    label: bool = True
    img2img_only: bool = False


def _replace_prompt(request: GenerationRequest, pair: tuple[str, str]) -> GenerationRequest:
    search, value = pair
    return replace(
        request,
        prompt=request.prompt.replace(search, value),
        negative_prompt=request.negative_prompt.replace(search, value),
    )


AXIS_TYPES: dict[str, AxisType] = {
    axis.name: axis
    for axis in [
        AxisType(NOTHING, str, lambda request, _: request),
        AxisType("Seed", int, lambda request, v: replace(request, seed=v)),
        AxisType("Steps", int, lambda request, v: replace(request, steps=v)),
        AxisType("CFG Scale", float, lambda request, v: replace(request, guidance_scale=v)),
        AxisType("Sampler", str, lambda request, v: replace(request, sampler=v), label=False),
        AxisType("Schedule type", str, lambda request, v: replace(request, schedule=v), label=False),
        # Each value replaces the first (which must be in the prompt); the value is (first, this one).
        AxisType("Prompt S/R", str, _replace_prompt, label=False),
        AxisType("Denoising strength", float, lambda request, v: replace(request, strength=v), img2img_only=True),
        # Not a request field: the cell's model is loaded before it runs.
        AxisType("Model", str, lambda request, _: request, label=False),
    ]
}


@dataclass(frozen=True)
class Axis:
    """An axis of the plot: its type and its parsed values (the text as typed is kept for the recipe)."""

    type: AxisType
    values: list[Any]
    text: str = ""

    def label(self, value: Any) -> str:
        """The value as the grid shows it: "CFG Scale: 7.5", "Euler a", "a red cat"."""
        shown = value[1] if self.type.name == "Prompt S/R" else _format(value)
        return f"{self.type.name}: {shown}" if self.type.label else shown

    def named(self, value: Any) -> str:
        """The value with its axis's name, for messages: "Sampler: Euler a"."""
        label = self.label(value)
        return label if self.type.label else f"{self.type.name}: {label}"


@dataclass(frozen=True)
class Cell:
    """One image of the plot: where it sits (x, y, z indices), the request that makes it, and its model."""

    position: tuple[int, int, int]
    request: GenerationRequest
    model: str  # the model it runs on: the Model axis's value, else the model loaded when the plot was planned

    def parameters(self) -> dict[str, Any]:
        """The cell's settings as JSON-able data (the tab's cell list and the API's JSON)."""
        fields = [name for name in PLOT_FIELDS if name != "strength" or self.request.task != Task.TXT2IMG]
        request = {name: getattr(self.request, name) for name in fields}
        return {"x": self.position[0], "y": self.position[1], "z": self.position[2], "model": self.model, **request}


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def split_values(text: str) -> list[str]:
    """Comma-separated values as A1111 reads them (Python's csv): `"a, b", c` is two values; spaces are stripped
    and empty values dropped."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as error:
        raise UserError(f"Could not read the values {text!r}: {error}.") from None
    return [value.strip() for row in rows for value in row if value.strip()]


def _number(axis: AxisType, text: str) -> float | int:
    cleaned = text.replace(" ", "")
    try:
        number = float(cleaned)
    except ValueError:
        raise UserError(
            f"{axis.name} values must be numbers or ranges (1-5, 1-5 (+2), 1-5 [3]); got {text!r}."
        ) from None
    if not math.isfinite(number):
        raise UserError(f"{axis.name} values must be finite numbers; got {text!r}.")
    if axis.kind is int:
        if not number.is_integer():
            raise UserError(f"{axis.name} values must be whole numbers; got {text!r}.")
        return int(number)
    return number


def _expand(axis: AxisType, text: str, max_values: int) -> list[float | int]:
    """One comma-separated item: a number or a range, expanded as A1111 does."""
    too_many = f"{axis.name} range {text!r} makes {{}} values; a plot has at most {max_values} cells."
    if found := _COUNT_RANGE.fullmatch(text):
        start, end = (_number(axis, group) for group in found.groups()[:2])
        count = int(found.group(3))
        if count > max_values:
            raise UserError(too_many.format(count))
        if count < 1:
            raise UserError(f"{axis.name} range {text!r} asks for no values: the count in [ ] must be at least 1.")
        # A1111: numpy.linspace, ends included; integers are truncated (int()), as there.
        values = [start + (end - start) * i / (count - 1) if count > 1 else start for i in range(count)]
        return [int(v) for v in values] if axis.kind is int else [round(v, 10) for v in values]
    if found := _STEP_RANGE.fullmatch(text):
        start, end = (_number(axis, group) for group in found.groups()[:2])
        step = _number(axis, found.group(3)) if found.group(3) else 1
        if step == 0:
            raise UserError(f"{axis.name} range {text!r} has a step of 0.")
        if axis.kind is int:
            values = range(int(start), int(end) + 1, int(step))  # A1111: range(start, end + 1, step)
            if len(values) > max_values:
                raise UserError(too_many.format(len(values)))
            return list(values)
        # A1111 uses numpy.arange(start, end + step, step); counting the steps first keeps float error from adding
        # or dropping the last value (0.1-0.3 (+0.1) is three values), and rounding keeps labels as typed.
        count = max(0, math.floor((end - start) / step + 1e-9) + 1)
        if count > max_values:
            raise UserError(too_many.format(count))
        return [round(start + i * step, 10) for i in range(count)]
    return [_number(axis, text)]


def parse_values(axis: AxisType, text: str, max_values: int = PlotLimits.max_cells) -> list[Any]:
    """The values of one axis typed as `text`, in A1111's syntax; a `UserError` names the value that is wrong.

    Numbers: comma lists and ranges (`1-5`, `1-5 (+2)`, `1-5 [3]`, `0.5-1.5 (+0.25)`). Names: comma lists, quoted
    with "..." when a value holds a comma. Prompt S/R values are pairs (first value, this value).
    """
    if axis.name == NOTHING:
        return [None]
    items = split_values(str(text or ""))
    if not items:
        raise UserError(f"Give the {axis.name} axis some values, or set its type to {NOTHING}.")
    if axis.kind is str:
        if len(items) > max_values:
            raise UserError(f"{axis.name} has {len(items)} values; a plot has at most {max_values} cells.")
        if axis.name == "Prompt S/R":
            return [(items[0], item) for item in items]
        return items
    values = [value for item in items for value in _expand(axis, item, max_values)]
    if not values:
        raise UserError(f"The {axis.name} values {text!r} make no values (is a range's step going the wrong way?).")
    return values


def axis(type_name: str | None, text: str | None, limits: PlotLimits = PlotLimits()) -> Axis:
    """An `Axis` from the tab's (or API's) type name and values text."""
    name = str(type_name or NOTHING).strip()
    found = next((a for a in AXIS_TYPES.values() if a.name.lower() == name.lower()), None)
    if found is None:
        raise UserError(f"Unknown axis type {name!r}. Choose one of: {', '.join(AXIS_TYPES)}.")
    return Axis(found, parse_values(found, text or "", limits.max_cells), str(text or ""))


def plan(
    base: GenerationRequest,
    axes: tuple[Axis, Axis, Axis],
    model: str,
    models: list[str] | None = None,
    limits: Limits = Limits(),
    plot_limits: PlotLimits = PlotLimits(),
    native_size: int = 512,
) -> list[Cell]:
    """The plot's cells in the order they run, each a full, validated request; a `UserError` before anything runs.

    `model` is the loaded model's name, `models` the names the Model axis may take (None: none), `native_size` the
    loaded model's (the pixel cap counts a text-to-image size of 0 as that). A seed of -1 (the base's, or a Seed
    value) is drawn once here, so that every cell shares it, as A1111's "Keep -1 for seeds" off. Cells run with
    the slowest axis to change (Model) outermost, then z, y and x, as A1111 orders them.
    """
    x, y, z = axes
    count = len(x.values) * len(y.values) * len(z.values)
    if count > plot_limits.max_cells:
        raise UserError(
            f"This plot has {count} cells ({len(x.values)} × {len(y.values)} × {len(z.values)}); "
            f"the limit is {plot_limits.max_cells}."
        )
    if base.batch_size != 1:
        raise UserError("A plot draws one image per cell: set Batch size to 1.")
    names = [a.type.name for a in axes if a.type.name != NOTHING]
    if repeated := {name for name in names if names.count(name) > 1}:
        raise UserError(f"Two axes have the type {sorted(repeated)[0]}: give each axis its own type.")
    for a in axes:
        _check_axis(a, base, models)
    if base.seed == -1:
        base = replace(base, seed=random.randint(0, MAX_SEED))
    axes = tuple(_fixed_seeds(a) for a in axes)  # type: ignore[assignment]

    cells = []
    loops = sorted(range(3), key=lambda i: (axes[i].type.name != "Model", -i))  # indices, outermost first
    sizes = [len(a.values) for a in axes]
    for flat in range(count):
        position = [0, 0, 0]
        rest = flat
        for i in reversed(loops):  # the innermost loop changes fastest
            rest, position[i] = divmod(rest, sizes[i])
        request, cell_model = base, model
        for a, index in zip(axes, position, strict=True):
            value = a.values[index]
            request = a.type.apply(request, value)
            if a.type.name == "Model":
                cell_model = value
        try:
            checked = validated(request, limits)
        except UserError as error:  # say which cell: "Steps: 200: steps must be between 1 and 150, ..."
            where = ", ".join(
                a.named(a.values[i]) for a, i in zip(axes, position, strict=True) if a.type.name != NOTHING
            )
            raise UserError(f"{where}: {error}" if where else str(error)) from None
        cells.append(Cell((position[0], position[1], position[2]), checked, cell_model))
    _check_pixels(cells, limits, plot_limits, native_size)
    return cells


def _check_axis(a: Axis, base: GenerationRequest, models: list[str] | None) -> None:
    name = a.type.name
    if a.type.img2img_only and base.task == Task.TXT2IMG:
        raise UserError(f"The {name} axis needs a start image (it applies to image-to-image).")
    if name == "Prompt S/R":
        first = a.values[0][0]
        if first not in base.prompt and first not in base.negative_prompt:
            raise UserError(
                f"Prompt S/R: the first value {first!r} is not in the prompt or the negative prompt; it is the text "
                "that each value replaces."
            )
    if name == "Model":
        allowed = models or []
        if not allowed:
            raise UserError("This server serves one model only: the Model axis is turned off.")
        for value in a.values:
            if value not in allowed:
                raise UserError(f"Unknown model {value!r} on the Model axis. Choose among: {', '.join(allowed)}.")


def _fixed_seeds(a: Axis) -> Axis:
    """A Seed axis with each -1 drawn once (A1111's fix_axis_seeds), so that the plot can be run again."""
    if a.type.name != "Seed":
        return a
    return replace(a, values=[random.randint(0, MAX_SEED) if v == -1 else v for v in a.values])


def cell_size(request: GenerationRequest, limits: Limits, native_size: int) -> tuple[int, int]:
    """The size of a cell's image: the request's, else the model's (text-to-image) or the start image's."""
    if request.width and request.height:
        return request.width, request.height
    if request.task == Task.TXT2IMG:
        return request.width or native_size, request.height or native_size
    return fit_within(open_image(request.image).size, limits.max_size)


def _check_pixels(cells: list[Cell], limits: Limits, plot_limits: PlotLimits, native_size: int) -> None:
    pixels = 0
    start_size = None  # the start image is decoded once, not once per cell
    for cell in cells:
        request = cell.request
        if request.task != Task.TXT2IMG and not (request.width and request.height):
            start_size = start_size or cell_size(request, limits, native_size)
            width, height = start_size
        else:
            width, height = cell_size(request, limits, native_size)
        pixels += width * height
    if pixels > plot_limits.max_megapixels * 1e6:
        raise UserError(
            f"This plot's {len(cells)} images have {pixels / 1e6:.1f} megapixels in all; the limit is "
            f"{plot_limits.max_megapixels:g}. Use fewer cells or a smaller size."
        )


@dataclass(frozen=True)
class CellStep:
    """Progress inside cell `index` (0-based, in run order) of `total`."""

    index: int
    total: int
    update: StepUpdate

    def describe(self) -> str:
        return f"Cell {self.index + 1} of {self.total} · {self.update.describe()}"


@dataclass(frozen=True)
class CellDone:
    index: int
    total: int
    result: GenerationResult


class ModelSwitched(UserError):
    """The loaded model changed under a plot (someone pressed Load): its later cells would not be what it says."""


def run_cells(
    manager: ModelManager,
    cells: list[Cell],
    limits: Limits,
    owner: str | None = None,
    load: Callable[[str], None] | None = None,
) -> Iterator[CellStep | CellDone]:
    """Run each cell as its own executor job (a plain `generate`, the one a single run makes), so that other
    users' jobs run between cells; yield its steps and its result. `load(name)` switches to a cell's model when the
    Model axis asks for another; the model loaded before is loaded again at the end, also after a Stop or an error.

    A Stop (`Cancelled`) or an error ends the plot there: the cells already yielded are the caller's to keep.
    """
    first = manager.model
    expected = first.name  # the model this plot has loaded (or found) last
    try:
        for index, cell in enumerate(cells):
            if manager.model.name != expected:
                raise ModelSwitched(
                    f"The model was switched to {manager.model.name} during the plot: it stopped before cell "
                    f"{index + 1} of {len(cells)}."
                )
            if cell.model != expected:
                if load is None:
                    raise UserError("This plot's Model axis needs a way to load models.")
                load(cell.model)
                expected = cell.model
            for item in manager.executor.run(JobSpec(generate, cell.request, limits, owner)):
                if isinstance(item, StepUpdate):
                    yield CellStep(index, len(cells), item)
                else:
                    yield CellDone(index, len(cells), item)
    finally:
        if load is not None and expected != first.name and manager.model.name == expected:
            load(first.name)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """`text` in lines that fit `width` pixels: at spaces, and inside a word only when the word alone is too wide."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
            continue
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = max(1, next((n for n in range(len(word), 0, -1) if draw.textlength(word[:n], font=font) <= width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def grid_image(cells: list[Cell], images: dict[int, Image.Image], axes: tuple[Axis, Axis, Axis]) -> Image.Image:
    """The labelled grid: for each z value a sub-grid (x across, y down), side by side, as A1111 draws them.

    `images` maps a cell's index in `cells` to its image; a missing one (a stopped plot) is a grey square. Labels
    are sized to the cells (at least 12 px, so that 64-pixel cells still have readable ones) and wrapped to fit.
    """
    x, y, z = axes
    by_position = {cell.position: images.get(index) for index, cell in enumerate(cells)}
    sizes = [image.size for image in images.values()] or [(64, 64)]
    cell_w, cell_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    font_size = max(12, (cell_w + cell_h) // 25)  # A1111's size, (w + h) / 25, with a floor for small cells
    font = _font(font_size)
    line = font_size + font_size // 3
    pad = max(4, font_size // 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lines_of(a: Axis, width: int) -> list[list[str]]:
        return [_wrap(measure, a.label(v), font, width - 2 * pad) if a.type.name != NOTHING else [] for v in a.values]

    x_lines = lines_of(x, cell_w)
    top = max(len(lines) for lines in x_lines) * line + (2 * pad if x.type.name != NOTHING else 0)
    # The y labels' column: as wide as the longest label, up to twice a cell (at least 160 px) before wrapping.
    widest = (
        max((measure.textlength(y.label(v), font=font) for v in y.values), default=0) if y.type.name != NOTHING else 0
    )
    left = 0 if y.type.name == NOTHING else int(min(widest, max(2 * cell_w, 160))) + 2 * pad
    y_lines = lines_of(y, left) if left else [[] for _ in y.values]
    sub_w, sub_h = left + cell_w * len(x.values), top + cell_h * len(y.values)
    z_lines = lines_of(z, sub_w)
    title = max(len(lines) for lines in z_lines) * line + (2 * pad if z.type.name != NOTHING else 0)
    gap = pad * 2 if len(z.values) > 1 else 0
    grid = Image.new("RGB", (sub_w * len(z.values) + gap * (len(z.values) - 1), title + sub_h), "white")
    draw = ImageDraw.Draw(grid)

    def text_block(lines: list[str], box: tuple[int, int, int, int]) -> None:
        """Centre `lines` in `box` (left, top, right, bottom)."""
        start = (box[1] + box[3]) / 2 - len(lines) * line / 2
        for n, text in enumerate(lines):
            draw.text(((box[0] + box[2]) / 2, start + n * line + line / 2), text, fill="black", font=font, anchor="mm")

    for iz in range(len(z.values)):
        origin = iz * (sub_w + gap)
        text_block(z_lines[iz], (origin, 0, origin + sub_w, title))
        for ix in range(len(x.values)):
            cx = origin + left + ix * cell_w
            text_block(x_lines[ix], (cx, title, cx + cell_w, title + top))
        for iy in range(len(y.values)):
            cy = title + top + iy * cell_h
            text_block(y_lines[iy], (origin, cy, origin + left, cy + cell_h))
            for ix in range(len(x.values)):
                cx = origin + left + ix * cell_w
                image = by_position.get((ix, iy, iz))
                if image is None:
                    draw.rectangle((cx, cy, cx + cell_w - 1, cy + cell_h - 1), fill="#c8c8c8")
                else:
                    grid.paste(
                        image.convert("RGB"), (cx + (cell_w - image.width) // 2, cy + (cell_h - image.height) // 2)
                    )
    return grid


def recipe(base: GenerationRequest, axes: tuple[Axis, Axis, Axis], cells: list[Cell], model: str) -> dict[str, Any]:
    """What the plot was: the base settings (with the seed it used), the axes as typed, and every cell's settings."""
    first = cells[0].request if cells else base
    settings = {key: value for key, value in asdict(replace(base, seed=first.seed)).items() if key in PLOT_FIELDS}
    return {
        "base": settings,
        "model": model,
        "axes": [{"name": label, "type": a.type.name, "values": a.text} for label, a in zip("XYZ", axes, strict=True)],
        "cells": [cell.parameters() for cell in cells],
    }


def with_recipe(grid: Image.Image, plot: dict[str, Any]) -> Image.Image:
    """Attach the plot's recipe to the grid: the `sdplay_xyz` JSON chunk, and an A1111-like `parameters` infotext
    (the base settings, then "X Type: Steps, X Values: 1-5", as A1111 writes a plot's grid)."""
    base = plot["base"]
    params: dict[str, object] = {
        "Steps": base["steps"],
        "Sampler": base["sampler"],
        "Schedule type": None if base["schedule"] == AUTOMATIC else base["schedule"],
        "CFG scale": base["guidance_scale"],
        "Seed": base["seed"],
        "Model": plot["model"],
    }
    if base["task"] != Task.TXT2IMG:
        params["Denoising strength"] = base["strength"]
    for entry in plot["axes"]:
        if entry["type"] != NOTHING:
            params[f"{entry['name']} Type"] = entry["type"]
            params[f"{entry['name']} Values"] = entry["values"]
    grid.info["parameters"] = format_infotext(base["prompt"], base["negative_prompt"], params)
    grid.info[RECIPE_KEY] = json.dumps(plot, ensure_ascii=False)
    return grid
