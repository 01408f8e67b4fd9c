"""Attention at one point of the image: where that place looks (self-attention) and which tokens it reads
(cross-attention), at a chosen step and UNet block.

Cross-attention comes from the run's recorded head-averaged maps (no model needed: replays work). Self-attention,
and cross-attention per head, are recorded by one UNet call at the step (`attend_at`) that keeps only the clicked
place's row of each layer's attention in the chosen block: never a whole self-attention map.
"""

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sdplay.explain.capture import ExplainRun, block_of, latent_grid, tokens_of
from sdplay.explain.render import COLORMAPS, token_text
from sdplay.inside.unet_step import StepInput, call_unet, forward_hooks, prompt_branch, run_pipe
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.runtime.tokenizer import END_OF_WORD

ALL_BLOCKS = "All blocks"
PADDING = "<padding>"
CHART_WIDTH = 560
ROW = 32  # pixels per bar: the chart is read on a projector
FONT = 19
MAX_BARS = 24  # longer prompts: the largest shares, the rest summed in one bar
BAR_COLOUR = (230, 85, 13)
INK = (40, 40, 40)


def point_cell(point: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """The (row, column) of a grid of (h, w) cells that holds `point`, (x, y) as fractions of the width and height
    from the top left corner."""
    x, y = point
    h, w = grid
    return min(max(int(y * h), 0), h - 1), min(max(int(x * w), 0), w - 1)


def checked_point(point: tuple[float, float]) -> tuple[float, float]:
    x, y = (float(value) for value in point)
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise UserError("Click inside the image.")
    return x, y


def token_labels(tokens: list[str]) -> list[str]:
    """The run's tokens as people read them ("<start>", "red", "<end>"), then the padding that sums the rest."""
    start, end = tokens[0], tokens[-1]
    labels = []
    for token in tokens:
        if token == start:
            labels.append("<start>")
        elif token == end:
            labels.append("<end>")
        else:
            text = token_text([token])
            labels.append(text if token.endswith(END_OF_WORD) else f"{text}-")  # a word's first piece
    return [*labels, PADDING]


# Cross-attention at a point, from the recording -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenShares:
    """How one place's cross-attention divides over the prompt's tokens (and the padding): sums to 1."""

    labels: list[str]
    shares: np.ndarray  # [tokens + 1]
    block: str  # a recorded block, or ALL_BLOCKS
    grid: tuple[int, int]  # the block's grid (ALL_BLOCKS: the finest recorded)
    cell: tuple[int, int]  # (row, column) in that grid


def recorded_shares(run: ExplainRun, step: int, block: str, point: tuple[float, float]) -> TokenShares:
    """The recorded maps (heads and the block's layers averaged) at the cell holding `point`. `ALL_BLOCKS` averages
    every block's cell at the point, weighted by its number of layers, as Explain's heatmap averages layers."""
    if not 0 <= step < run.steps:
        raise UserError(f"Pick a step from 1 to {run.steps}.")
    point = checked_point(point)
    blocks = list(run.attention) if block == ALL_BLOCKS else [block]
    if any(name not in run.attention for name in blocks):
        raise UserError(f"This run has cross-attention in {', '.join(run.attention)}, not in {block!r}.")
    total = torch.zeros(run.attention[blocks[0]].shape[1])
    for name in blocks:
        maps = run.attention[name][step].float()  # [T+1, h, w]
        row, column = point_cell(point, tuple(maps.shape[-2:]))
        total += run.layers[name] * maps[:, row, column]
    finest = max(blocks, key=lambda name: run.attention[name].shape[-1])
    grid = tuple(run.attention[finest].shape[-2:])
    return TokenShares(
        labels=token_labels(run.tokens),
        shares=(total / sum(run.layers[name] for name in blocks)).numpy(),
        block=block,
        grid=grid,
        cell=point_cell(point, grid),
    )


# Self-attention (and cross-attention per head) at a point: one UNet call ------------------------------------------


@dataclass(frozen=True)
class PointRequest:
    """Attention at one place, at a recorded step, in one block (picklable: it crosses the executor boundary)."""

    step: StepInput
    block: str  # a UNet block with attention layers: "down_blocks.1", "mid_block", ...
    point: tuple[float, float]  # (x, y): fractions of the image's width and height, from the top left corner
    cross_heads: bool = False  # also keep the block's cross-attention at the point, per head


@dataclass(frozen=True)
class PointAttention:
    """Rows of softmax(q·kᵀ/√d) for the query at the point, in the prompt's branch, per layer and head."""

    block: str
    layers: list[str]  # the block's attention layers, in order
    grid: tuple[int, int]  # the block's (h, w)
    cell: tuple[int, int]  # (row, column) of the point in it
    self_rows: torch.Tensor  # [layers, heads, h·w]: over every place of the block's grid
    cross_rows: torch.Tensor | None  # [layers, heads, tokens + 1]: the run's tokens, then the padding summed

    def self_map(self) -> np.ndarray:
        """[h, w]: where the point looks, averaged over the block's layers and heads."""
        return self.self_rows.mean((0, 1)).reshape(self.grid).numpy()

    def head_maps(self) -> np.ndarray:
        """[heads, h, w]: each head's map, averaged over the block's layers."""
        return self.self_rows.mean(0).reshape(-1, *self.grid).numpy()

    def cross_heads(self) -> np.ndarray | None:
        """[heads, tokens + 1]: each head's shares, averaged over the block's layers."""
        return None if self.cross_rows is None else self.cross_rows.mean(0).numpy()


def attention_blocks(unet: torch.nn.Module) -> list[str]:
    """The UNet's blocks that have self-attention layers, in the order data flows."""
    blocks = [block_of(name) for name, _ in unet.named_modules() if name.endswith(".attn1")]
    kinds = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    unique = dict.fromkeys(blocks)
    return sorted(unique, key=lambda b: (kinds[b.split(".")[0]], int(b.partition(".")[2] or 0)))


class QueryRow:
    """Keeps, for one attention layer, the softmax row of the query at one point: [heads, keys] in the prompt's
    branch. The layer's projections are hooked (the processor and its fast kernel are untouched); the row is
    computed once the layer is done, from its q and k, and the full q and k are dropped."""

    def __init__(self, attn, point: tuple[float, float], latent_size: tuple[int, int]) -> None:
        self.attn, self.point, self.latent_size = attn, point, latent_size
        self.projected: dict[str, torch.Tensor] = {}
        self.rows: list[torch.Tensor] = []
        self.grid: tuple[int, int] = (0, 0)
        self.cell: tuple[int, int] = (0, 0)

    def hooks(self) -> list:
        def keep(name: str):
            return lambda module, args, kwargs, output: self.projected.__setitem__(name, output)

        return [(self.attn.to_q, keep("query")), (self.attn.to_k, keep("key")), (self.attn, self._done)]

    def _done(self, module, args, kwargs, output) -> None:
        attn = self.attn
        query, key = prompt_branch(self.projected.pop("query")), prompt_branch(self.projected.pop("key"))
        self.grid = latent_grid(query.shape[0], *self.latent_size)
        self.cell = point_cell(self.point, self.grid)
        heads = attn.heads
        q = query[self.cell[0] * self.grid[1] + self.cell[1]].view(heads, -1)  # [heads, d]
        k = key.view(key.shape[0], heads, -1).transpose(0, 1)  # [heads, keys, d]
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        scores = torch.einsum("hd,hkd->hk", q.float(), k.float()) * attn.scale
        self.rows.append(scores.softmax(dim=-1).cpu())


def attend_at(
    manager: ModelManager, request: PointRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> PointAttention:
    """One UNet call at the recorded step, keeping the point's row of each self-attention layer of the block (and,
    if asked, of each cross-attention layer, per head)."""
    point = checked_point(request.point)
    with manager.job(control):
        pipe = run_pipe(manager, request.step)
        unet = pipe.unet
        blocks = attention_blocks(unet)
        if request.block not in blocks:
            raise UserError(f"Pick one of the blocks with attention: {', '.join(blocks)}.")
        latent_size = tuple(request.step.latents.shape[-2:])
        prefix = f"{request.block}."
        names = [n for n, _ in unet.named_modules() if n.startswith(prefix) and n.endswith(".attn1")]
        kinds = ("attn1", "attn2") if request.cross_heads else ("attn1",)
        rows = {
            kind: [QueryRow(unet.get_submodule(n.removesuffix("attn1") + kind), point, latent_size) for n in names]
            for kind in kinds
        }
        with forward_hooks([hook for kept in rows.values() for row in kept for hook in row.hooks()]):
            call_unet(pipe, request.step)
        first = rows["attn1"][0]
        cross = None
        if request.cross_heads:
            tokens = tokens_of(pipe.tokenizer, request.step.prompt, request.step.steps)
            cross = torch.stack([text_shares(row.rows[0], tokens.positions) for row in rows["attn2"]])
        return PointAttention(
            block=request.block,
            layers=[n.removesuffix(".attn1") for n in names],
            grid=first.grid,
            cell=first.cell,
            self_rows=torch.stack([row.rows[0] for row in rows["attn1"]]),
            cross_rows=cross,
        )


def text_shares(probabilities: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """[heads, text positions] -> [heads, tokens + 1]: the tokens' positions, then the rest (padding) summed, as the
    Explain capture keeps them."""
    real = torch.zeros(probabilities.shape[-1], dtype=torch.bool)
    real[positions] = True
    return torch.cat([probabilities[:, real], probabilities[:, ~real].sum(-1, keepdim=True)], dim=-1)


# Drawing --------------------------------------------------------------------------------------------------------


@cache  # loading the font costs more than drawing with it
def _font(size: int = FONT) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def marked(base: Image.Image, grid: tuple[int, int], cell: tuple[int, int]) -> Image.Image:
    """`base` with the grid cell of the point outlined: the place whose attention is shown."""
    image = base.convert("RGB")
    draw = ImageDraw.Draw(image)
    (h, w), (row, column) = grid, cell
    cell_w, cell_h = image.width / w, image.height / h
    box = (column * cell_w, row * cell_h, (column + 1) * cell_w - 1, (row + 1) * cell_h - 1)
    draw.rectangle(box, outline="black", width=4)
    draw.rectangle(box, outline="white", width=2)
    return image


def overlay(base: Image.Image, values: np.ndarray, opacity: float = 0.65) -> Image.Image:
    """A map over `base` (viridis, its own min–max), each cell of the map a square."""
    up = np.asarray(Image.fromarray(values.astype(np.float32)).resize(base.size, Image.Resampling.NEAREST))
    low, high = float(up.min()), float(up.max())
    index = np.clip((up - low) / max(high - low, 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8)
    pixels = np.asarray(base.convert("RGB"), dtype=np.float32) * (1 - opacity) + COLORMAPS["viridis"][index] * opacity
    return Image.fromarray(pixels.round().astype(np.uint8))


def self_attention_image(base: Image.Image, attention: PointAttention) -> Image.Image:
    """Where the point looks (layers and heads averaged) over the image, the point's cell outlined."""
    return marked(overlay(base, attention.self_map()), attention.grid, attention.cell)


def head_images(base: Image.Image, attention: PointAttention, size: int = 160) -> list[tuple[Image.Image, str]]:
    """Each head's map (the block's layers averaged), small."""
    small = base.resize((size, round(size * base.height / base.width)), Image.Resampling.LANCZOS)
    return [
        (marked(overlay(small, values), attention.grid, attention.cell), f"head {index + 1}")
        for index, values in enumerate(attention.head_maps())
    ]


def shown_bars(labels: list[str], shares: np.ndarray, limit: int = MAX_BARS) -> tuple[list[str], np.ndarray]:
    """At most `limit` bars in prompt order: with more tokens, the largest ones and one bar for the rest."""
    if len(labels) <= limit:
        return labels, shares
    keep = sorted(np.argsort(-shares)[: limit - 1].tolist())
    rest = float(shares.sum() - shares[keep].sum())
    return [labels[i] for i in keep] + [f"{len(labels) - len(keep)} others"], np.append(shares[keep], rest)


def share_chart(labels: list[str], shares: np.ndarray, title: str) -> Image.Image:
    """Horizontal bars, one per token in prompt order, with their shares as numbers; large type for projectors."""
    labels, shares = shown_bars(labels, shares)
    font = _font()
    left = 20 + max(int(font.getlength(label)) for label in labels) + 12
    image = Image.new("RGB", (CHART_WIDTH, 56 + ROW * len(labels) + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((CHART_WIDTH // 2, 10), title, fill=INK, font=_font(FONT + 2), anchor="mt")
    room = CHART_WIDTH - left - 80
    top = max(float(shares.max()), 1e-12)
    for index, (label, share) in enumerate(zip(labels, shares, strict=True)):
        y = 48 + index * ROW
        draw.text((left - 12, y + ROW / 2), label, fill=INK, font=font, anchor="rm")
        draw.rectangle((left, y + 5, left + room * share / top, y + ROW - 5), fill=BAR_COLOUR)
        draw.text((left + room * share / top + 8, y + ROW / 2), f"{share:.2f}", fill=INK, font=font, anchor="lm")
    return image


def head_table(labels: list[str], per_head: np.ndarray, title: str) -> Image.Image:
    """[heads, tokens + 1] as a table: a row per token, a column per head and the mean, each cell shaded by its
    share (white 0 to orange 1) with the number in it."""
    columns = [*(f"h{i + 1}" for i in range(per_head.shape[0])), "mean"]
    values = np.concatenate([per_head.T, per_head.mean(0)[:, None]], axis=1)  # [tokens + 1, heads + 1]
    font = _font(FONT - 2)
    left = 20 + max(int(font.getlength(label)) for label in labels) + 12
    cell_w, cell_h = 62, 28
    width = max(left + cell_w * len(columns) + 10, 360)
    image = Image.new("RGB", (width, 86 + cell_h * len(labels)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 10), title, fill=INK, font=_font(FONT + 2), anchor="mt")
    for column, name in enumerate(columns):
        draw.text((left + column * cell_w + cell_w / 2, 60), name, fill=INK, font=font, anchor="mb")
    white, orange = np.array([255, 255, 255]), np.array(BAR_COLOUR)
    for row, label in enumerate(labels):
        y = 66 + row * cell_h
        draw.text((left - 10, y + cell_h / 2), label, fill=INK, font=font, anchor="rm")
        for column in range(len(columns)):
            share = float(values[row, column])
            fill = tuple((white + (orange - white) * min(max(share, 0.0), 1.0)).round().astype(int))
            box = (left + column * cell_w, y, left + (column + 1) * cell_w - 2, y + cell_h - 2)
            draw.rectangle(box, fill=fill)
            ink = "white" if share > 0.55 else INK
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), f"{share:.2f}", fill=ink, font=font, anchor="mm")
    return image
