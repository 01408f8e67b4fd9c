"""Pictures the lesson shows that the Explain view has no panel for: the tokens, CLIP's causal mask, the VAE's
compression, the UNet's U of levels, and the grid that self-attention relates. Plain PIL on an `ExplainView`.

The words in them are numbers and the prompt's own tokens, so that they read the same in every language.
"""

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sdplay.explain.render import CHOSEN_COLOUR, ExplainView, HeatmapSettings, Word, token_text
from sdplay.inside.latent import compression as latent_compression

INK = (40, 40, 40)
GREY = (130, 130, 130)
FAINT = (225, 225, 225)
WORD_COLOURS = [(219, 234, 254), (254, 243, 199)]  # the words alternate between these, so their pieces group
READS = (59, 130, 246)  # a causal-mask cell where the row's token reads the column's
WIDTH = 760  # pixels: the token chips wrap at this width
MAX_MASK_TOKENS = 24  # the causal mask of a longer prompt shows its first tokens (its rows would be too thin)


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans where the system has it (it draws accented letters), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def token_label(view: ExplainView, position: int) -> str:
    """A token as students read it: the piece of text it stands for, or <start> and <end>."""
    word = word_at(view.words, position)
    if word.special:
        return f"<{word.text}>"
    return token_text([view.run.tokens[position]]) or "?"


def word_at(words: list[Word], position: int) -> Word:
    return next(word for word in words if position in word.tokens)


def token_chips(view: ExplainView, ids: list[int] | None, chosen: int) -> Image.Image:
    """The prompt's tokens as chips in reading order: the piece of text, its position and (given `ids`) its id in
    the vocabulary. Pieces of one word share a colour; the chosen word's chips are outlined."""
    big, small = font(22), font(16)
    positions = range(min(len(view.run.tokens), 77))
    chips = []
    for position in positions:
        lines = [token_label(view, position), f"#{position}"] + ([f"id {ids[position]}"] if ids is not None else [])
        width = max(big.getlength(lines[0]), *(small.getlength(line) for line in lines[1:])) + 20
        chips.append((position, lines, int(width)))
    height = 34 + 22 * (len(chips[0][1]) - 1) if chips else 40
    rows, x, y = [], 10, 10
    for chip in chips:
        if x + chip[2] > WIDTH - 10 and x > 10:
            x, y = 10, y + height + 10
        rows.append((chip, x, y))
        x += chip[2] + 8
    image = Image.new("RGB", (WIDTH, y + height + 10), "white")
    draw = ImageDraw.Draw(image)
    chosen_tokens = set(view.words[chosen].tokens) if 0 <= chosen < len(view.words) else set()
    for (position, lines, width), x, y in rows:
        word = word_at(view.words, position)
        fill = FAINT if word.special else WORD_COLOURS[view.words.index(word) % 2]
        outline, border = (CHOSEN_COLOUR, 4) if position in chosen_tokens else (GREY, 1)
        draw.rounded_rectangle([x, y, x + width, y + height], radius=8, fill=fill, outline=outline, width=border)
        draw.text((x + width / 2, y + 27), lines[0], fill=INK, font=big, anchor="ms")  # on one baseline
        for row, line in enumerate(lines[1:]):
            draw.text((x + width / 2, y + 34 + 22 * row), line, fill=GREY, font=small, anchor="mt")
    return image


def causal_reads(count: int) -> np.ndarray:
    """[count, count] booleans: whether the token of a row reads the token of a column in CLIP's text encoder, whose
    attention is causal (each token reads itself and the tokens before it)."""
    return np.tril(np.ones((count, count), dtype=bool))


def causal_mask(view: ExplainView, chosen: int) -> Image.Image:
    """CLIP's causal attention mask over the prompt's tokens: row i reads column j when j ≤ i. The chosen word's
    rows are drawn in its colour: the tokens it reads."""
    count = min(len(view.run.tokens), MAX_MASK_TOKENS)
    labels = [token_label(view, p) for p in range(count)]
    label_font, number_font = font(18), font(14)
    cell = max(14, min(30, 480 // count))
    left = int(max(label_font.getlength(label) for label in labels)) + 24
    top = 30
    size = (left + count * cell + 12, top + count * cell + 12)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    chosen_rows = set(view.words[chosen].tokens) if 0 <= chosen < len(view.words) else set()
    reads = causal_reads(count)
    for row in range(count):
        y = top + row * cell
        colour = CHOSEN_COLOUR if row in chosen_rows else INK
        draw.text((left - 10, y + cell / 2), labels[row], fill=colour, font=label_font, anchor="rm")
        for column in range(count):
            x = left + column * cell
            fill = (CHOSEN_COLOUR if row in chosen_rows else READS) if reads[row, column] else FAINT
            draw.rectangle([x + 1, y + 1, x + cell - 1, y + cell - 1], fill=fill)
    for column in range(0, count, 1 if cell >= 20 else 2):
        draw.text((left + (column + 0.5) * cell, top - 6), str(column), fill=GREY, font=number_font, anchor="mb")
    return image


def latent_tiles(latent: np.ndarray, side: int) -> Image.Image:
    """A latent's channels as grey squares (mid-grey = 0) in a grid about `side` pixels wide, each value a square."""
    channels, height, width = latent.shape
    columns = int(np.ceil(np.sqrt(channels)))
    rows = int(np.ceil(channels / columns))
    gap = 6
    zoom = max(1, (side - gap * (columns - 1)) // (columns * width))
    scale = float(np.percentile(np.abs(latent), 99.5)) or 1.0
    grey = ((np.clip(latent / scale, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    sheet = Image.new("RGB", (columns * (width * zoom + gap) - gap, rows * (height * zoom + gap) - gap), "white")
    for c in range(channels):
        tile = Image.fromarray(grey[c]).resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        sheet.paste(tile, ((c % columns) * (width * zoom + gap), (c // columns) * (height * zoom + gap)))
    return sheet


def value_counts(view: ExplainView) -> tuple[int, int]:
    """How many numbers the final image holds (its pixels' R, G and B) and how many its latent does, as the Inside
    tab's latent-space section counts them from the run's model's numbers."""
    height, width = view.run.image.shape[:2]
    counted = latent_compression(view.facts, width, height)
    return counted.pixel_values, counted.latent_values


def compression(view: ExplainView) -> Image.Image:
    """The final image next to its latent's channels, each with its count of numbers, and the factor between."""
    run = view.run
    height, width = run.image.shape[:2]
    latent = run.x0[-1].float().numpy()
    channels, h, w = latent.shape
    pixels, values = value_counts(view)
    side = view.size[1]
    picture = view.image
    tiles = latent_tiles(latent, side)
    arrow = 150
    text_font, big = font(20), font(30)
    canvas = Image.new("RGB", (picture.width + arrow + tiles.width + 20, max(side, tiles.height) + 80), "white")
    canvas.paste(picture, (10, 10))
    canvas.paste(tiles, (10 + picture.width + arrow, 10))
    draw = ImageDraw.Draw(canvas)
    bottom = max(side, tiles.height) + 20
    draw.text(
        (10 + picture.width / 2, bottom), f"{width}x{height}x3 = {pixels:,}", fill=INK, font=text_font, anchor="mt"
    )
    draw.text(
        (10 + picture.width + arrow + tiles.width / 2, bottom), f"{channels}x{w}x{h} = {values:,}", fill=INK,
        font=text_font, anchor="mt",
    )  # fmt: skip
    middle = 10 + picture.width + arrow / 2
    draw.line([(middle - 50, 10 + side / 2), (middle + 45, 10 + side / 2)], fill=CHOSEN_COLOUR, width=6)
    draw.polygon(
        [(middle + 55, 10 + side / 2), (middle + 35, side / 2 - 2), (middle + 35, side / 2 + 22)], fill=CHOSEN_COLOUR
    )
    draw.text((middle, 10 + side / 2 + 20), f"1/{pixels / values:.3g}", fill=CHOSEN_COLOUR, font=big, anchor="mt")
    return canvas


def block_resolution(view: ExplainView, block: str) -> int:
    """The height of a UNet block's grid, from its recorded attention maps."""
    return int(view.run.attention[block].shape[-2])


def skip_pairs(blocks: list[str], resolution: dict[str, int]) -> list[tuple[str, str]]:
    """(down block, up block) pairs at the same resolution: where the U's skip connections carry the down path's
    features across to the up path."""
    ups = [b for b in blocks if b.startswith("up")]
    pairs = []
    for down in (b for b in blocks if b.startswith("down")):
        match = next((up for up in reversed(ups) if resolution[up] == resolution[down]), None)
        if match is not None:
            ups.remove(match)
            pairs.append((down, match))
    return pairs


def unet_levels(view: ExplainView, step: int, settings: HeatmapSettings) -> Image.Image:
    """The UNet's blocks with cross-attention drawn as a U: down to coarser grids on the left, the middle at the
    bottom, up on the right, dashed skip connections between the blocks of one resolution. Each tile is the chosen
    word's attention in that block at the block's own resolution (one square per position)."""
    blocks = view.blocks
    tiles = dict(zip(blocks, (image for image, _ in view.layer_matrix(step, settings)), strict=False))
    resolution = {block: block_resolution(view, block) for block in blocks}
    levels = sorted(set(resolution.values()), reverse=True)
    tile = {block: max(70, round(150 * 0.8 ** levels.index(resolution[block]))) for block in blocks}
    column, row, label_room = 170, 175, 26
    image = Image.new("RGB", (column * len(blocks) + 20, row * len(levels) + 20), "white")
    draw = ImageDraw.Draw(image)
    centres = {}
    for index, block in enumerate(blocks):
        level = levels.index(resolution[block])
        centres[block] = (10 + column * index + column / 2, 10 + row * level + (row - label_room) / 2)
    for down, up in skip_pairs(blocks, resolution):  # dashed, behind the tiles
        (x0, y), (x1, _) = centres[down], centres[up]
        for x in range(int(x0), int(x1), 16):
            draw.line([(x, y), (min(x + 9, x1), y)], fill=GREY, width=3)
    draw.line([centres[block] for block in blocks], fill=INK, width=4)  # the path data takes
    small = font(17)
    for block in blocks:
        x, y = centres[block]
        half = tile[block] / 2
        picture = tiles[block].resize((tile[block], tile[block]), Image.Resampling.NEAREST)
        image.paste(picture, (round(x - half), round(y - half)))
        name = block.split("_")[0]
        label = f"{name} {resolution[block]}x{view.run.attention[block].shape[-1]}"
        draw.text((x, y + half + 6), label, fill=INK, font=small, anchor="mt")
    return image


def attention_grid(view: ExplainView, step: int, settings: HeatmapSettings) -> Image.Image:
    """x̂₀ at `step` with the grid of positions at the UNet's finest attention level, and lines from one position
    (where the chosen word looks most) to the others: self-attention relates every position to every other."""
    picture = view.x0(step).convert("RGB").copy()
    finest = max(view.blocks, key=lambda block: block_resolution(view, block))
    rows, columns = view.run.attention[finest].shape[-2:]
    width, height = picture.size
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for r in range(1, rows):
        draw.line([(0, r * height / rows), (width, r * height / rows)], fill=(255, 255, 255, 60), width=1)
    for c in range(1, columns):
        draw.line([(c * width / columns, 0), (c * width / columns, height)], fill=(255, 255, 255, 60), width=1)
    peak = view.word_maps(step, settings)[settings.word]
    r, c = np.unravel_index(int(np.argmax(peak)), peak.shape)
    centre = (int(r * rows / peak.shape[0]), int(c * columns / peak.shape[1]))
    here = ((centre[1] + 0.5) * width / columns, (centre[0] + 0.5) * height / rows)
    every = max(1, max(rows, columns) // 8)  # at most 8×8 lines: enough to read "to every other"
    for r in range(0, rows, every):
        for c in range(0, columns, every):
            there = ((c + 0.5) * width / columns, (r + 0.5) * height / rows)
            draw.line([here, there], fill=(255, 255, 255, 170), width=1)
    box = [here[0] - width / columns / 2, here[1] - height / rows / 2]
    corner = (box[0] + width / columns, box[1] + height / rows)
    draw.rectangle([box[0] - 2, box[1] - 2, corner[0] + 2, corner[1] + 2], outline=(0, 0, 0, 255), width=2)
    draw.rectangle([*box, *corner], outline=(255, 255, 255, 255), width=2)
    picture = Image.alpha_composite(picture.convert("RGBA"), overlay).convert("RGB")
    label = f"{rows}x{columns} = {rows * columns:,}"
    text = ImageDraw.Draw(picture)
    text.rectangle([0, height - 30, font(18).getlength(label) + 16, height], fill=(255, 255, 255))
    text.text((8, height - 15), label, fill=INK, font=font(18), anchor="lm")
    return picture


def neighbour_rows(found: list, tokens: list[str]) -> Image.Image:
    """Each word of the prompt and the vocabulary's tokens whose static vectors point most nearly its way, with
    their cosine similarity (`found`: embeddings.Neighbours, the start and end tokens left out)."""
    first, last = tokens[0], tokens[-1]
    rows = [item for item in found if item.token not in (first, last)]
    big, small = font(20), font(17)
    left = int(max((big.getlength(token_text([item.token])) for item in rows), default=0)) + 30
    height = 36
    image = Image.new("RGB", (WIDTH, 10 + height * max(len(rows), 1)), "white")
    draw = ImageDraw.Draw(image)
    for index, item in enumerate(rows):
        y = 10 + index * height + height / 2
        draw.text((left - 16, y), token_text([item.token]), fill=CHOSEN_COLOUR, font=big, anchor="rm")
        x = left
        for name, score in item.nearest:
            label = f"{token_text([name])} {score:.2f}"
            width = small.getlength(label) + 16
            if x + width > WIDTH - 6:
                break
            draw.rounded_rectangle([x, y - 14, x + width, y + 14], radius=7, fill=WORD_COLOURS[0], outline=GREY)
            draw.text((x + 8, y), label, fill=INK, font=small, anchor="lm")
            x += width + 6
    return image


def side_by_side(images: list[Image.Image], gap: int = 10) -> Image.Image:
    """Images in a row on white, top-aligned."""
    canvas = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)))
    canvas.paste((255, 255, 255), (0, 0, *canvas.size))
    x = 0
    for picture in images:
        canvas.paste(picture.convert("RGB"), (x, 0))
        x += picture.width + gap
    return canvas
