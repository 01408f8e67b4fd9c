"""Inside the UNet at one step of a run: its blocks (resolution, channels, skips, parameters, FLOPs), the first
convolution's kernels and feature maps, and every block's output, recorded by one UNet call and drawn with PIL.

`look_inside` is a job (it runs the model): one call at the recorded step with forward hooks on the UNet's parts,
keeping only a few channels of each part's output (the prompt's branch), so memory stays bounded by the asked step.
"""

import math
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from sdplay.explain.render import COLORMAPS
from sdplay.inside.unet_step import StepInput, StepOutput, call_unet, forward_hooks, prompt_branch, run_pipe
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits

MOSAIC_CHANNELS = 16  # channels kept of each part's output: the ones that vary most over the image
# The parts that data flows through, in order; ModuleLists are split into their blocks. Other parts (the time
# embedding, ...) condition every block from the side.
PATH = ("conv_in", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out")
DIAGRAM_SIZE = (1280, 680)
DIAGRAM_MARGIN = 12
FONT = 17  # pixels: the diagram is read on a projector
BOX_COLOURS = {"down": (219, 234, 254), "mid": (254, 243, 199), "up": (220, 252, 231), "conv": (243, 244, 246)}
SKIP_COLOUR = (217, 119, 6)
INK = (40, 40, 40)


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """softmax(QKᵀ)V: two matrix products, as torch counts them for its GPU attention kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the GPU attention kernels but not these (the CPU's and Apple's): without them attention is missing.
ATTENTION_KERNELS = {
    op: _attention_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math_for_mps")
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


@dataclass(frozen=True)
class UNetRequest:
    """Look inside the UNet at one recorded step (picklable: it crosses the executor boundary)."""

    step: StepInput


@dataclass(frozen=True)
class Part:
    """One part of the UNet: a block, a convolution, the time embedding. Shapes are (channels, h, w) of the
    prompt's image; None for parts that do not see the image (the time embedding)."""

    name: str  # its name in the UNet: "down_blocks.1", "mid_block", "conv_in"
    kind: str  # its class: "CrossAttnDownBlock2D", "Conv2d"
    parameters: int
    flops: int  # per image, in this call: 2 per multiply-add of convolutions, linear layers and attention
    input_shape: tuple[int, int, int] | None
    output_shape: tuple[int, int, int] | None
    skips: dict[str, int]  # up blocks: the parts whose outputs they read through skip connections, and how many

    @property
    def on_path(self) -> bool:
        return self.name.split(".")[0] in PATH


@dataclass(frozen=True)
class Features:
    """A part's output in the prompt's branch: the channels that vary most, and the mean over all channels."""

    channels: list[int]  # the kept channels, in the part's order
    maps: torch.Tensor  # [len(channels), h, w]
    mean: torch.Tensor  # [h, w]: the mean over every channel
    mean_activation: float  # over every channel and position
    mean_absolute: float


@dataclass(frozen=True)
class UNetInside:
    """What one UNet call at a step showed. `parts` are in the order data flows, then the side parts."""

    step: int
    timestep: float
    latents: torch.Tensor  # [C, h, w]: the x_t the UNet read
    parts: list[Part]
    features: dict[str, Features]  # conv_in, every block, conv_out
    kernels: torch.Tensor  # [k, C_in, kh, kw]: the first convolution's kernels of the kept channels of conv_in
    bias: torch.Tensor  # [k]
    output: StepOutput  # the call's prediction, to compare with the recorded one

    @property
    def parameters(self) -> int:
        return sum(part.parameters for part in self.parts)

    @property
    def flops(self) -> int:
        return sum(part.flops for part in self.parts)


def unet_parts(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's parts: its children, lists of blocks split into their blocks, those on the data path first and
    in its order (down, mid, up), then the others (the time embedding, ...)."""
    parts = []
    for name, child in unet.named_children():
        if isinstance(child, torch.nn.ModuleList):
            parts += [(f"{name}.{index}", block) for index, block in enumerate(child)]
        else:
            parts.append((name, child))

    def order(part: tuple[str, torch.nn.Module]) -> int:
        root = part[0].split(".")[0]
        return PATH.index(root) if root in PATH else len(PATH)

    return sorted(parts, key=order)  # stable: blocks keep their order


def skip_connections(unet: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Which parts each up block reads through skip connections, as diffusers' UNet2DConditionModel wires them:
    conv_in's output and every down block's resnet and downsampler outputs are kept on a stack, and each up block
    takes as many from its top as it has resnets."""
    stack = ["conv_in"]
    for index, block in enumerate(unet.down_blocks):
        downsamplers = len(block.downsamplers) if block.downsamplers is not None else 0
        stack += [f"down_blocks.{index}"] * (len(block.resnets) + downsamplers)
    skips = {}
    for index, block in enumerate(unet.up_blocks):
        taken = len(block.resnets)
        stack, read = stack[:-taken], stack[-taken:]
        skips[f"up_blocks.{index}"] = dict(Counter(read))
    return skips


def summarise(output: torch.Tensor, keep: int = MOSAIC_CHANNELS) -> Features:
    """A part's output [C, h, w], kept small: the `keep` channels with the largest spread over the image."""
    maps = output.float()
    spread = maps.flatten(1).std(dim=1) if maps[0].numel() > 1 else maps.flatten(1).abs().sum(1)
    channels = sorted(spread.argsort(descending=True)[:keep].tolist())
    return Features(
        channels=channels,
        maps=maps[channels].cpu().clone(),
        mean=maps.mean(0).cpu(),
        mean_activation=float(maps.mean()),
        mean_absolute=float(maps.abs().mean()),
    )


def _image_shape(tensor: torch.Tensor) -> tuple[int, int, int]:
    return tuple(int(size) for size in tensor.shape[1:])


def _first_tensor(value) -> torch.Tensor:
    """The hidden states of a part's input or output (down blocks also return their skip outputs)."""
    return value[0] if isinstance(value, tuple) else value


def look_inside(
    manager: ModelManager, request: UNetRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> UNetInside:
    """One UNet call at the recorded step, counting FLOPs (torch's FlopCounterMode) and keeping each part's
    input and output shapes and a summary of its output (`summarise`)."""
    with manager.job(control):
        pipe = run_pipe(manager, request.step)
        unet = pipe.unet
        parts = unet_parts(unet)
        shapes: dict[str, tuple] = {}
        features: dict[str, Features] = {}

        def recorder(name: str):
            def hook(module, args, kwargs, output) -> None:
                hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                hidden, output = _first_tensor(hidden), _first_tensor(output)
                shapes[name] = (_image_shape(hidden), _image_shape(output))
                if name not in ("conv_norm_out", "conv_act"):  # the same maps as conv_out's input: not shown
                    features[name] = summarise(prompt_branch(output))

            return hook

        watched = [(module, recorder(name)) for name, module in parts if name.split(".")[0] in PATH]
        counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_KERNELS)
        with forward_hooks(watched), counter:
            output = call_unet(pipe, request.step)
        counts = counter.get_flop_counts()
        root = type(unet).__name__
        skips = skip_connections(unet)
        kept = features["conv_in"].channels
        return UNetInside(
            step=request.step.step,
            timestep=request.step.timestep,
            latents=request.step.latents,
            parts=[
                Part(
                    name=name,
                    kind=type(module).__name__,
                    parameters=sum(p.numel() for p in module.parameters()),
                    flops=sum(counts.get(f"{root}.{name}", {}).values()) // output.batch,
                    input_shape=shapes.get(name, (None, None))[0],
                    output_shape=shapes.get(name, (None, None))[1],
                    skips=skips.get(name, {}),
                )
                for name, module in parts
            ],
            features=features,
            kernels=unet.conv_in.weight[kept].detach().float().cpu().clone(),
            bias=unet.conv_in.bias[kept].detach().float().cpu().clone(),
            output=output,
        )


# Drawing --------------------------------------------------------------------------------------------------------


def short_name(name: str) -> str:
    """'down_blocks.1' -> 'down 1', 'mid_block' -> 'mid', 'conv_in' -> 'conv in'."""
    kind, _, index = name.partition(".")
    kind = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}.get(kind, kind.replace("_", " "))
    return f"{kind} {index}" if index else kind


def count_text(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M', in the largest of k, M, G, T that keeps it at 1 or more."""
    for power, prefix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if value >= 10**power:
            return f"{value / 10**power:.3g} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


@cache  # loading the font costs more than drawing with it
def _font(size: int = FONT) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def _levels(parts: list[Part]) -> dict[str, int]:
    """The row of each drawn part: the resolution it works at (its input's), finest first; the middle one below."""
    heights = sorted({part.input_shape[1] for part in parts}, reverse=True)
    rows = {part.name: heights.index(part.input_shape[1]) for part in parts}
    for part in parts:
        if part.name == "mid_block":
            rows[part.name] = len(heights)
    return rows


Box = tuple[float, float, float, float]  # a box of the diagram: x0, y0, x1, y1


def diagram(inside: UNetInside, model: str = "") -> Image.Image:
    """The UNet as a U: down blocks on the left going down in resolution, the middle at the bottom, up blocks on
    the right going up; dashed orange lines are skip connections (×n: how many tensors). Each box states the part's
    resolution and channels out, its parameters and its FLOPs for this call."""
    drawn = [p for p in inside.parts if p.on_path and p.input_shape is not None and p.name not in ("conv_norm_out",
             "conv_act")]  # fmt: skip
    side = [p for p in inside.parts if p not in drawn]
    rows = _levels(drawn)
    image = Image.new("RGB", DIAGRAM_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(), _font(FONT - 2)
    h, w = inside.latents.shape[-2:]
    draw.text(
        (DIAGRAM_SIZE[0] // 2, 12),
        f"The UNet{f' of {model}' if model else ''}: {count_text(inside.parameters)} parameters, "
        f"{count_text(inside.flops, 'FLOP')} per image per call at {h}x{w} latents",
        fill=INK, font=_font(FONT + 5), anchor="mt",
    )  # fmt: skip
    boxes = _boxes(drawn, rows)
    _skip_lines(draw, drawn, boxes, rows, small)  # first, under the boxes
    for before, after in zip(drawn, drawn[1:], strict=False):  # the data path
        a, b = boxes[before.name], boxes[after.name]
        _arrow(draw, (a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2))
    for part in drawn:
        _box(draw, part, boxes[part.name], font, small)
    _footer(draw, side, small)
    return image


def _boxes(drawn: list[Part], rows: dict[str, int]) -> dict[str, Box]:
    """Each drawn part's box: one column each, left to right in data order, on its row of the U."""
    width, height = DIAGRAM_SIZE
    top, bottom = 60, height - 70
    column = (width - 2 * DIAGRAM_MARGIN) / len(drawn)
    box_w, row_h = column - 10, (bottom - top) / (max(rows.values()) + 1)
    box_h = min(row_h - 14, 118)
    boxes = {}
    for index, part in enumerate(drawn):
        x, y = DIAGRAM_MARGIN + index * column + 5, top + rows[part.name] * row_h + (row_h - box_h) / 2
        boxes[part.name] = (x, y, x + box_w, y + box_h)
    return boxes


def _skip_lines(
    draw: ImageDraw.ImageDraw, drawn: list[Part], boxes: dict[str, Box], rows: dict[str, int], small
) -> None:
    """The skip connections, dashed: from the producer's right side along its row, then down or straight into the
    up block (over the boxes in the way, if any), with "xn" where one carries n tensors."""
    leaving = {name: [p.name for p in drawn if name in p.skips] for name in boxes}  # each producer's readers
    for part in drawn:
        for source, count in part.skips.items():
            sx0, sy0, sx1, sy1 = boxes[source]
            tx0, ty0, tx1, ty1 = boxes[part.name]
            readers = leaving[source]  # lines leaving one box are spread apart, so that each can be followed
            y = (sy0 + sy1) / 2 + (readers.index(part.name) - (len(readers) - 1) / 2) * 20
            between = [n for n, r in rows.items() if r == rows[source] and sx1 < boxes[n][0] < tx0]
            if between:  # boxes in the way along the row (conv_in's skip passes the first down block): go over them
                over = sy0 - 14
                points = [
                    ((sx0 + sx1) / 2, sy0),
                    ((sx0 + sx1) / 2, over),
                    ((tx0 + tx1) / 2, over),
                    ((tx0 + tx1) / 2, ty0),
                ]
                label_at = ((sx1 + tx0) / 2, over - 2)
            elif rows[source] == rows[part.name]:
                points = [(sx1, y), (tx0, y)]
                label_at = ((sx1 + tx0) / 2, y - 4)
            else:
                x = (tx0 + tx1) / 2
                points = [(sx1, y), (x, y), (x, ty0)]
                label_at = (x + 4, (y + ty0) / 2)
            _dashed(draw, points, SKIP_COLOUR)
            if count > 1:
                draw.text(
                    label_at, f"x{count}", fill=SKIP_COLOUR, font=small, anchor="lm" if len(points) == 3 else "mb"
                )


def _box(draw: ImageDraw.ImageDraw, part: Part, box: Box, font, small) -> None:
    """One part's box: its name, resolution (in -> out), channels out, parameters and FLOPs."""
    x0, y0, x1, y1 = box
    colour = BOX_COLOURS.get(short_name(part.name).split()[0], BOX_COLOURS["conv"])
    draw.rounded_rectangle((x0, y0, x1, y1), radius=8, fill=colour, outline=INK, width=2)
    channels, out_h, out_w = part.output_shape
    _, in_h, in_w = part.input_shape
    size = f"{in_h}x{in_w}" + (f" -> {out_h}x{out_w}" if (in_h, in_w) != (out_h, out_w) else "")
    lines = [
        (short_name(part.name), font),
        (size, small),
        (f"{channels} channels", small),
        (f"{count_text(part.parameters)} params", small),
        (count_text(part.flops, "FLOP"), small),
    ]
    step = (y1 - y0 - 8) / len(lines)
    for row, (text, face) in enumerate(lines):
        face = fitting(text, face, x1 - x0 - 6)
        draw.text(((x0 + x1) / 2, y0 + 6 + step * (row + 0.5)), text, fill=INK, font=face, anchor="mm")


def _footer(draw: ImageDraw.ImageDraw, side: list[Part], small) -> None:
    """What the boxes do not show, so that every parameter is counted somewhere, and how FLOPs are counted."""
    height = DIAGRAM_SIZE[1]
    others = [p for p in side if p.parameters or p.flops]
    footer = "Not drawn: " + ", ".join(
        f"{short_name(p.name)} ({count_text(p.parameters)} params, {count_text(p.flops, 'FLOP')})" for p in others
    )
    draw.text((DIAGRAM_MARGIN, height - 52), footer if others else "", fill=INK, font=small)
    draw.text(
        (DIAGRAM_MARGIN, height - 26),
        "FLOP: 2 per multiply-add of convolutions, linear layers and attention (torch's FlopCounterMode). "
        "Dashed: skip connections (xn: n tensors).",
        fill=(90, 90, 90), font=small,
    )  # fmt: skip


def fitting(text: str, font: ImageFont.FreeTypeFont, width: float) -> ImageFont.FreeTypeFont:
    """`font`, or a smaller size of it if `text` would be wider than `width` pixels (SD's "64x64 -> 32x32")."""
    size = font.size
    while size > 9 and font.getlength(text) > width:
        size -= 1
        font = _font(size)
    return font


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, dash: int = 9) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        length = math.hypot(x1 - x0, y1 - y0)
        for start in range(0, int(length), 2 * dash):
            end = min(start + dash, length)
            a, b = start / length, end / length
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                      fill=colour, width=3)  # fmt: skip


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float]) -> None:
    draw.line([start, end], fill=INK, width=3)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    head = [
        end,
        (end[0] - 11 * math.cos(angle - 0.45), end[1] - 11 * math.sin(angle - 0.45)),
        (end[0] - 11 * math.cos(angle + 0.45), end[1] - 11 * math.sin(angle + 0.45)),
    ]
    draw.polygon(head, fill=INK)


def grey(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed values as grey levels: mid-grey is 0, black −scale, white +scale (as Explain's latent channels)."""
    return ((np.clip(values / (scale or 1.0), -1, 1) + 1) * 127.5).round().astype(np.uint8)


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed values as blue (negative), white (0) and red (positive): [.., 3] uint8."""
    t = np.clip(values / (scale or 1.0), -1, 1)[..., None]
    blue, white, red = np.array([33, 102, 172]), np.array([255, 255, 255]), np.array([178, 24, 43])
    colour = np.where(t < 0, white + (blue - white) * -t, white + (red - white) * t)
    return colour.round().astype(np.uint8)


def _tile(pixels: np.ndarray, size: int) -> Image.Image:
    """A small map enlarged to `size` pixels on its long side, each value a square."""
    h, w = pixels.shape[:2]
    zoom = max(1, size // max(h, w))
    return Image.fromarray(pixels).resize((w * zoom, h * zoom), Image.Resampling.NEAREST)


def _scale(values: torch.Tensor) -> float:
    """A colour scale that ignores outliers: the 99.5th percentile of |values|."""
    return float(np.percentile(np.abs(values.numpy()), 99.5)) or 1.0


def first_convolution(inside: UNetInside, columns: int = 4) -> Image.Image:
    """The input x_t (its channels), then for each kept channel of the first convolution: its kernel (one small
    square per input channel, blue < 0 < red) and the feature map it makes on x_t (grey, mid-grey = 0)."""
    font, small = _font(), _font(FONT - 3)
    kernels, latents = inside.kernels.numpy(), inside.latents.numpy()
    maps = inside.features["conv_in"]
    count, inputs, kh, kw = kernels.shape
    cell = max(6, 36 // max(kh, kw))  # pixels per kernel weight
    kernel_w = inputs * (kw * cell + 8)
    map_size = 96
    unit_w, unit_h = kernel_w + 30 + map_size + 24, map_size + 30
    rows = math.ceil(count / columns)
    badge = 34  # Gradio's label sits over the image's top left corner
    header = badge + 176
    width = max(columns * unit_w + 20, 4 * 120 + 20)
    image = Image.new("RGB", (width, header + rows * unit_h + 10), "white")
    draw = ImageDraw.Draw(image)
    title = f"x_t at step {inside.step + 1}: the {inputs} latent channels the UNet reads"
    draw.text((10, badge + 8), title, fill=INK, font=font)
    draw.text(
        (10, header - 26),
        f"Kernels of {kh}x{kw} weights, one square per latent channel (blue < 0 < red), and the map each makes on x_t:",
        fill=INK, font=font,
    )  # fmt: skip
    scale = _scale(inside.latents)
    for channel in range(latents.shape[0]):
        image.paste(_tile(grey(latents[channel], scale), 96), (10 + channel * 110, badge + 36))
    kernel_scale = float(np.abs(kernels).max()) or 1.0
    map_scale = _scale(maps.maps)
    for index, channel in enumerate(maps.channels):
        left, top = 10 + (index % columns) * unit_w, header + (index // columns) * unit_h
        draw.text((left, top), f"kernel {channel}", fill=INK, font=small)
        for source in range(inputs):
            tile = _tile(diverging(kernels[index, source], kernel_scale), kw * cell)
            image.paste(tile, (left + source * (kw * cell + 8), top + 24 + (map_size - kh * cell) // 2))
        arrow_y = top + 24 + map_size // 2
        _arrow(draw, (left + kernel_w + 2, arrow_y), (left + kernel_w + 24, arrow_y))
        image.paste(_tile(grey(maps.maps[index].numpy(), map_scale), map_size), (left + kernel_w + 28, top + 24))
    return image


def block_tile(name: str, features: Features, size: int = 56) -> Image.Image:
    """A part's output: its kept channels as a mosaic of grey squares (one scale for the part, mid-grey = 0), and
    to the right the mean over all its channels (viridis, its own min–max)."""
    maps = features.maps.numpy()
    scale = _scale(features.maps)
    count = len(maps)
    side = math.ceil(math.sqrt(count))
    h, w = maps.shape[1:]
    zoom = max(1, size // max(h, w))
    tile_w, tile_h = w * zoom, h * zoom
    gap = 3
    mosaic_w, mosaic_h = side * (tile_w + gap) - gap, math.ceil(count / side) * (tile_h + gap) - gap
    mean = features.mean.numpy()
    low, high = float(mean.min()), float(mean.max())
    index = np.clip((mean - low) / max(high - low, 1e-8) * 255 + 0.5, 0, 255).astype(np.uint8)
    mean_tile = _tile(COLORMAPS["viridis"][index], max(mosaic_h, 64))
    image = Image.new("RGB", (mosaic_w + 12 + mean_tile.width, max(mosaic_h, mean_tile.height)), "white")
    for position in range(count):
        tile = Image.fromarray(grey(maps[position], scale)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        image.paste(tile, ((position % side) * (tile_w + gap), (position // side) * (tile_h + gap)))
    image.paste(mean_tile, (mosaic_w + 12, 0))
    return image


def block_label(part: Part, features: Features) -> str:
    """'down 1 · 8×8 · 16/96 ch': the part, its output's grid, and how many of its channels the mosaic shows."""
    channels, h, w = part.output_shape
    return f"{short_name(part.name)} · {h}×{w} · {len(features.channels)}/{channels} ch"


def block_tiles(inside: UNetInside) -> list[tuple[Image.Image, str]]:
    """Every recorded part's output, in the order data flows: (mosaic + mean map, label)."""
    return [
        (block_tile(part.name, inside.features[part.name]), block_label(part, inside.features[part.name]))
        for part in inside.parts
        if part.name in inside.features
    ]


def activation_chart(inside: UNetInside) -> Image.Image:
    """Each part's mean |activation| (bars) and mean activation (the signed number), in the order data flows."""
    shown = [part for part in inside.parts if part.name in inside.features]
    font = _font()
    row, left, width = 34, 110, 720
    image = Image.new("RGB", (width, 56 + row * len(shown)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 8), "Mean |activation| of each part's output", fill=INK, font=_font(FONT + 3), anchor="mt")
    largest = max(inside.features[part.name].mean_absolute for part in shown) or 1.0
    for index, part in enumerate(shown):
        features = inside.features[part.name]
        y = 44 + index * row
        draw.text((left - 10, y + row / 2), short_name(part.name), fill=INK, font=font, anchor="rm")
        length = (width - left - 230) * features.mean_absolute / largest
        draw.rectangle((left, y + 6, left + length, y + row - 6), fill=(59, 130, 246))
        draw.text(
            (left + length + 8, y + row / 2),
            f"{features.mean_absolute:.2f} (mean {features.mean_activation:+.2f})",
            fill=INK, font=font, anchor="lm",
        )  # fmt: skip
    return image


def reproduction_note(inside: UNetInside, eps_cond: torch.Tensor, eps_uncond: torch.Tensor | None) -> str:
    """Markdown: how closely this call reproduced the step's recorded prediction (it should, exactly)."""
    differences = [float((inside.output.eps_cond - eps_cond).abs().max())]
    if inside.output.eps_uncond is not None and eps_uncond is not None:
        differences.append(float((inside.output.eps_uncond - eps_uncond).abs().max()))
    text = f"Its ε differs from the recorded step's by at most {max(differences):.2g}"
    if max(differences) > 1e-2:
        # Heun-type samplers make two calls a step (and PLMS two at its first): the recording keeps the last's ε.
        return text + ": this sampler's step makes a second UNet call, whose prediction the run recorded."
    return text + ": the same computation as in the run."


def check_step(step: int, steps: int) -> None:
    if not 0 <= step < steps:
        raise UserError(f"Pick a step from 1 to {steps}.")
