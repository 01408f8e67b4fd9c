"""Draw every panel of the Explain view from an `ExplainRun`: plain numpy/PIL on cached arrays, no model needed.

`ExplainView` wraps one run with what every redraw reuses (word groups, layer-averaged maps, scales); `draw()`
renders everything that depends on the step, cheaply enough to follow a scrubber. `PANELS` is the registry of the
panels: one `Panel` record each (what it draws, its caption, its image format, where the Explain tab shows it,
whether presentation mode shows it). Adding a panel is a function of a `Frame` and one line there.
"""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from sdplay.explain.captions import CAPTIONS, Caption, ModelFacts
from sdplay.explain.capture import ExplainRun, Recipe
from sdplay.explain.export import load_run
from sdplay.runtime.errors import UserError
from sdplay.runtime.previews import latents_to_rgb
from sdplay.runtime.request import Limits
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.runtime.tokenizer import END_OF_WORD, byte_to_unicode

# Panels are drawn at the final image's size, brought into this range: tiny models make 64 px images, which a
# browser would blur when stretching them; big ones would make every redraw slow.
DISPLAY_MIN, DISPLAY_MAX = 256, 512
# Anchor colours, evenly spaced from 0 to 1 (viridis and inferno after matplotlib's, jet after MATLAB's).
COLORMAP_ANCHORS = {
    "viridis": "#440154 #482878 #3e4989 #31688e #26828e #1f9e89 #35b779 #6ece58 #b5de2b #fde725".split(),
    "inferno": "#000004 #1b0c41 #4a0c6b #781c6d #a52c60 #cf4446 #ed6925 #fb9b06 #f7d13d #fcffa4".split(),
    "jet": "#000080 #0000ff #0080ff #00ffff #80ff80 #ffff00 #ff8000 #ff0000 #800000".split(),
}


def colormap(anchors: list[str]) -> np.ndarray:
    """A [256, 3] uint8 lookup table through evenly spaced anchor colours, linearly interpolated."""
    rgb = np.array([[int(a[i : i + 2], 16) for i in (1, 3, 5)] for a in anchors], dtype=np.float32)
    positions = np.linspace(0, 1, len(anchors))
    levels = np.linspace(0, 1, 256)
    return np.stack([np.interp(levels, positions, rgb[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


COLORMAPS = {name: colormap(anchors) for name, anchors in COLORMAP_ANCHORS.items()}
# The timeline charts are read on projectors: big type, the chosen word in one strong colour, every other word grey.
CHART_SIZE = (720, 400)
CHART_FONT = 20  # pixels
CHOSEN_COLOUR = (230, 85, 13)
OTHER_COLOUR = (175, 175, 175)
LABEL_COLOUR = (120, 120, 120)  # grey words, a shade darker than their lines to stay legible
AXIS_COLOUR = (60, 60, 60)
GRID_COLOUR = (232, 232, 232)
TIMELINE_TITLES = {
    "mass": "Attention mass (share of all attention)",
    "concentration": "Concentration (0 = even, 1 = one spot)",
}
# Function words (prepositions, conjunctions, articles, pronouns, auxiliaries): they never head a noun phrase, and
# after one's content words they start the next phrase. For picking the first word to show.
FUNCTION_WORDS = frozenset(
    "of on in at by for from to with without under over near behind above below beside between into onto through "
    "across against along around among inside outside beneath beyond during like as and or but nor while than "
    "a an the this that these those some any each every no my your his her its our their it they he she we i you "
    "is are was were be been being am has have had do does very so too just".split()
)


@dataclass(frozen=True)
class Word:
    """A word as the tokenizer split it: its text and its positions in the run's tokens."""

    text: str
    tokens: tuple[int, ...]
    special: bool = False  # the start or end token

    @property
    def label(self) -> str:
        return f"⟨{self.text}⟩" if self.special else self.text


def code(token: str) -> str:
    """A token as Markdown code in a table cell: a '|' (CLIP's '<|startoftext|>') would end the cell, and a '<...>'
    outside code would be read as an HTML tag and vanish."""
    return "`" + token.replace("|", "\\|") + "`"


def token_text(tokens: list[str]) -> str:
    """CLIP's byte-level BPE spells bytes as printable characters and ends words with `</w>`: undo both."""
    to_byte = {char: byte for byte, char in byte_to_unicode().items()}
    spelled = "".join(tokens).replace(END_OF_WORD, "")
    return bytes(to_byte[c] for c in spelled if c in to_byte).decode("utf-8", errors="replace")


def words_of(tokens: list[str]) -> list[Word]:
    """Merge subword tokens into words (a word ends at a token ending in `</w>`), framed by start and end; a prompt
    of several chunks of 75 has a start and an end token around each chunk."""
    words = []
    pending: list[int] = []
    for position, token in enumerate(tokens):
        starts, ends = position == 0 or token == tokens[0], position == len(tokens) - 1 or token == tokens[-1]
        if starts or ends:
            if pending:  # a word cut in the middle by the end of a chunk
                words.append(Word(token_text([tokens[p] for p in pending]), tuple(pending)))
                pending = []
            words.append(Word("start" if starts else "end", (position,), special=True))
            continue
        pending.append(position)
        if token.endswith(END_OF_WORD):
            words.append(Word(token_text([tokens[p] for p in pending]), tuple(pending)))
            pending = []
    return words


def word_sums(values: np.ndarray, words: list[Word], axis: int) -> np.ndarray:
    """`values` summed over each word's tokens along the token `axis`: a word's map is the sum of its tokens' maps
    (their attention adds up). The words cover the tokens in order, so one `reduceat` does it; a dense
    [words, tokens] matrix would grow with the square of their number."""
    return np.add.reduceat(values, [word.tokens[0] for word in words], axis=axis)


def dropped_text(prompt: str, words: list[Word]) -> str:
    """The end of `prompt` past what the tokens kept, or "" if the text cannot be matched.

    The tokenizer lowercases and drops whitespace, so we walk the prompt skipping spaces and comparing letters.
    """
    kept = "".join(w.text for w in words if not w.special).lower()
    matched = 0
    for position, char in enumerate(prompt):
        if matched == len(kept):
            return prompt[position:].strip()
        if char.isspace():
            continue
        if char.lower() != kept[matched]:
            return ""
        matched += 1
    return ""


def content_word(words: list[Word]) -> int:
    """The word to show first: the head of the prompt's first noun phrase, whose map falls on a thing (the map of
    "a" is a ring around it). Without a parser, the head is the last of the first run of content words, which a
    function word, a punctuation mark or the prompt's end closes ("a watercolor painting of ..." -> painting);
    failing that, the first real word."""
    phrase: list[int] = []
    for index, word in enumerate(words):
        text = word.text.lower()
        if word.special or text in FUNCTION_WORDS or not any(c.isalnum() for c in text):
            if phrase:
                return phrase[-1]
        else:
            phrase.append(index)
    real = [i for i, w in enumerate(words) if not w.special]
    return real[0] if real else 0


def block_label(block: str, height: int, width: int) -> str:
    """'down_blocks.1' at 16×16 -> 'down 16×16'; 'mid_block' -> 'mid ...'."""
    return f"{block.split('_')[0]} {height}×{width}"


def block_order(block: str) -> tuple[int, int]:
    """Down blocks (by index), then the middle, then up blocks: the order data flows through the UNet."""
    kind, _, index = block.partition(".")
    return {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[kind], int(index or 0)


def guidance_brightness(gain: float) -> str:
    """How the guidance term is drawn next to the ε panels, `gain` being its colour scale over theirs. At high CFG
    the term outgrows ε, and a gain below 1 means dimmer, not "×0.2 brighter"."""
    if round(max(gain, 1 / gain), 1) == 1.0:  # what the note would print as ×1.0
        return "drawn at true scale (the ε panels' scale)"
    if gain > 1:
        return f"drawn ×{gain:.1f} brighter than the ε panels"
    return f"drawn ×{1 / gain:.1f} dimmer than the ε panels"


def run_facts(run: ExplainRun) -> ModelFacts:
    """The model's numbers for the captions: recorded with the run, or, in runs saved before they were, the VAE's
    from the run's own shapes."""
    recorded = run.recipe.model_facts
    if recorded is not None:
        return ModelFacts(**{name: int(value) for name, value in recorded.items()})
    return ModelFacts(vae_factor=run.image.shape[0] // run.latents.shape[-2], latent_channels=run.latents.shape[1])


def display_size(width: int, height: int) -> tuple[int, int]:
    """The panels' size for an image: small ones enlarged by a whole factor, large ones shrunk to fit."""
    long = max(width, height)
    factor = DISPLAY_MAX / long if long > DISPLAY_MAX else max(1, DISPLAY_MIN // long)
    return round(width * factor), round(height * factor)


@dataclass(frozen=True)
class HeatmapSettings:
    """How to draw word maps. `steps` is an inclusive range of steps to sum (DAAM); None means the shown step."""

    word: int = 1  # index into `ExplainView.words`
    colormap: str = "viridis"
    opacity: float = 0.6
    shared: bool = False  # one scale for all words (which word dominates) instead of each word's own min-max
    steps: tuple[int, int] | None = None


class ExplainView:
    """One run, ready to draw: the per-run work (layer averages, word groups, scales) is done once here."""

    def __init__(self, run: ExplainRun) -> None:
        self.run = run
        self.facts = run_facts(run)
        self.words = words_of(run.tokens)
        self.negative_words = words_of(run.negative_tokens)
        height, width = run.image.shape[:2]
        self.size = display_size(width, height)
        self.tile_size = (self.size[0] // 2, self.size[1] // 2)
        image = Image.fromarray(run.image)
        self.image = image.resize(self.size, Image.Resampling.LANCZOS)
        self._base = np.asarray(self.image, dtype=np.float32)
        self._tile_base = np.asarray(image.resize(self.tile_size, Image.Resampling.LANCZOS), dtype=np.float32)
        self.blocks = sorted(run.attention, key=block_order)
        # Redraws use numpy and PIL only: on a busy CPU every multi-threaded torch call can wait a scheduler
        # slice for its second thread, so torch work (previews, layer averages) is done here once.
        self._previews = {
            name: [latents_to_rgb(latents, run.latent_rgb) for latents in tensor]
            for name, tensor in (("x_t", run.latents), ("x0", run.x0), ("blended", run.blended))
            if tensor is not None
        }
        self._block_maps = {block: run.attention[block].numpy() for block in self.blocks}  # fp16, no copy
        self._maps = run.averaged_attention().numpy()  # [S, T, h, w]
        self._negative_maps = run.averaged_attention(negative=True).numpy() if run.negative_attention else None
        # One fixed grey scale per row of channel tiles, so that steps compare; percentiles ignore outliers.
        self._channel_scales = [float(np.percentile(np.abs(t.numpy()), 99.5)) or 1.0 for t in (run.latents, run.x0)]
        self._decoded: dict[int, Image.Image] = {}

    # Per-step panels ------------------------------------------------------------------------------------------

    def draw(self, step: int, settings: HeatmapSettings, panels: Sequence["Panel"] | None = None) -> dict[str, object]:
        """Each panel that changes with the step (`step_panels()`, or `panels`), drawn for `step` (0-based), by name."""
        frame = Frame(self, step, settings)
        return {panel.name: panel.draw(frame) for panel in (step_panels() if panels is None else panels)}

    def step_label(self, step: int) -> str:
        """Markdown: the step, its timestep and noise level, and where strength started the schedule."""
        run = self.run
        label = f"**Step {step + 1} of {run.steps}** · t = {run.timesteps[step]:.0f} · σ = {run.sigmas[step]:.3g}"
        strength = run.recipe.strength  # only image-to-image and inpaint runs have one
        if strength is not None and run.first_step:
            total = run.recipe.steps
            label += (
                f" · strength {strength} starts the {total}-step schedule at step {run.first_step + 1}: "
                f"this is schedule step {run.first_step + step + 1} of {total}"
            )
        return label

    def preview(self, name: str, step: int) -> Image.Image:
        """The cheap linear latent -> RGB preview of "x_t", "x0" or "blended", at the panel size."""
        return self._previews[name][step].resize(self.size, Image.Resampling.BILINEAR)

    def x0(self, step: int) -> Image.Image:
        """x̂₀ decoded by the VAE if it was (`keep_decoded`), else through the linear preview."""
        return self._decoded[step] if step in self._decoded else self.preview("x0", step)

    def keep_decoded(self, step: int, image: Image.Image) -> None:
        """Show `image`, x̂₀ of `step` decoded by the VAE (sdplay/explain/decoding.py), from now on."""
        self._decoded[step] = image.convert("RGB").resize(self.size, Image.Resampling.LANCZOS)

    @property
    def decoded_steps(self) -> frozenset[int]:
        """The steps whose x̂₀ `x0` shows decoded: what a picture made of x̂₀s must redraw when it grows."""
        return frozenset(self._decoded)

    def noise(self, step: int) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        """ε_uncond, ε_cond and the guidance term through the colour map without its offset (grey = 0).

        Both ε share one symmetric scale; the guidance term is much smaller, so it gets its own, and the note says
        by how much it is amplified."""
        run = self.run
        weights = run.latent_rgb[:-1].numpy()  # the last row is the bias: zero noise should stay grey
        uncond, cond, guidance = (
            np.einsum("chw,cr->hwr", t[step].numpy(), weights) for t in (run.eps_uncond, run.eps_cond, run.guidance)
        )
        eps_scale = float(max(np.abs(cond).max(), np.abs(uncond).max())) or 1.0
        guidance_scale = float(np.abs(guidance).max())
        note = f"Both ε share the scale ±{eps_scale:.2f} (grey = 0)"
        if not run.negative_attention:
            note += " · no guidance: with CFG scale ≤ 1 only the prompt's branch runs"
        elif not guidance_scale:
            note += " · the guidance term is 0: the prompt and the negative prompt read the same"
        else:
            rms = float(np.sqrt(np.mean(run.guidance[step].numpy() ** 2)))
            note += (
                f" · the guidance term is {guidance_brightness(eps_scale / guidance_scale)} · CFG scale "
                f"{run.recipe.guidance_scale} · guidance rms {rms:.3f} (latent units)"
            )
        return (
            self._signed(uncond, eps_scale),
            self._signed(cond, eps_scale),
            self._signed(guidance, guidance_scale or 1.0),
            note,
        )

    def _signed(self, rgb: np.ndarray, scale: float) -> Image.Image:
        pixels = ((np.clip(rgb / scale, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return Image.fromarray(pixels).resize(self.size, Image.Resampling.BILINEAR)

    def channels(self, step: int) -> Image.Image:
        """The latent channels as grey tiles (mid-grey = 0): x_t on top, x̂₀ below, with each pixel a square."""
        rows = [self.run.latents[step].numpy(), self.run.x0[step].numpy()]
        channels, height, width = rows[0].shape
        zoom = max(1, self.tile_size[0] // width)
        gap = 4
        sheet = np.full((2 * height * zoom + gap, channels * (width * zoom + gap) - gap), 255, dtype=np.uint8)
        for r, (latent, scale) in enumerate(zip(rows, self._channel_scales, strict=True)):
            grey = ((np.clip(latent / scale, -1, 1) + 1) * 127.5).round().astype(np.uint8)
            for c in range(channels):
                tile = grey[c].repeat(zoom, 0).repeat(zoom, 1)
                top, left = r * (height * zoom + gap), c * (width * zoom + gap)
                sheet[top : top + height * zoom, left : left + width * zoom] = tile
        return Image.fromarray(sheet)

    # Word maps ------------------------------------------------------------------------------------------------

    def _steps(self, step: int, settings: HeatmapSettings) -> slice:
        first, last = settings.steps if settings.steps is not None else (step, step)
        return slice(first, last + 1)

    def word_maps(self, step: int, settings: HeatmapSettings, negative: bool = False) -> np.ndarray:
        """[words, h, w]: each word's attention at the step, or summed over the step range."""
        maps, words = (self._negative_maps, self.negative_words) if negative else (self._maps, self.words)
        summed = maps[self._steps(step, settings)].sum(0)  # [T, h, w]
        return word_sums(summed, words, axis=0)

    def _overlay(
        self, values: np.ndarray, high: float | None, settings: HeatmapSettings, small: bool = False, squares=False
    ) -> tuple[Image.Image, float, float]:
        """Colour a map over the image (`small`: at tile size). `high` None: stretch to the map's own min-max
        (DAAM's normalisation); else a shared scale from 0 to `high`. Maps are upsampled bicubically, or as
        `squares` where the map's own resolution is the point."""
        base, size = (self._tile_base, self.tile_size) if small else (self._base, self.size)
        resample = Image.Resampling.NEAREST if squares else Image.Resampling.BICUBIC
        up = np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, resample))
        low, high = (float(up.min()), float(up.max())) if high is None else (0.0, high)
        index = np.clip((up - low) / max(high - low, 1e-8) * 255 + 0.5, 0, 255).astype(np.uint8)
        colour = COLORMAPS[settings.colormap][index]
        pixels = base * (1 - settings.opacity) + colour * settings.opacity
        return Image.fromarray(pixels.round().astype(np.uint8)), low, high

    def _shared_high(self, maps: np.ndarray, words: list[Word]) -> float:
        """The shared scale's top: the largest value of any real word (start/end would dwarf them all)."""
        real = [i for i, w in enumerate(words) if not w.special] or list(range(len(words)))
        return float(maps[real].max())

    def heatmap(self, step: int, settings: HeatmapSettings) -> tuple[Image.Image, str]:
        """The chosen word's map over the final image, and an HTML colour bar with its range."""
        maps = self.word_maps(step, settings)
        high = self._shared_high(maps, self.words) if settings.shared else None
        image, low, high = self._overlay(maps[settings.word], high, settings)
        return image, self.colorbar(settings, low, high)

    def colorbar(self, settings: HeatmapSettings, low: float, high: float) -> str:
        gradient = ", ".join(COLORMAP_ANCHORS[settings.colormap])
        first, last = (settings.steps[0] + 1, settings.steps[1] + 1) if settings.steps else (None, None)
        what = f"summed over steps {first}–{last}" if first else "at this step"
        scale = "one scale shared by all words" if settings.shared else "this word's own min–max"
        return (
            '<div style="display:flex;align-items:center;gap:8px;font-size:0.85em">'
            f"<span>{low:.3f}</span>"
            f'<div style="flex:1;height:12px;border-radius:3px;background:linear-gradient(to right, {gradient})">'
            f"</div><span>{high:.3f}</span></div>"
            f'<div style="font-size:0.85em;opacity:0.8">Share of each pixel\'s attention {what} ({scale}).</div>'
        )

    def layer_matrix(self, step: int, settings: HeatmapSettings) -> list[tuple[Image.Image, str]]:
        """The chosen word in each UNet block at the block's own resolution, then the average of all layers."""
        tokens = list(self.words[settings.word].tokens)
        maps = [
            self._block_maps[b][self._steps(step, settings), tokens].astype(np.float32).sum((0, 1)) for b in self.blocks
        ]
        maps.append(self.word_maps(step, settings)[settings.word])
        labels = [*self.blocks, "average"]
        return [
            (self._overlay(m, None, settings, small=True, squares=True)[0], block_label(label, *m.shape))
            for m, label in zip(maps, labels, strict=True)
        ]

    def negative_maps(self, step: int, settings: HeatmapSettings) -> list[tuple[Image.Image, str]]:
        """Every negative-prompt word's map (unconditional branch), empty without guidance."""
        if self._negative_maps is None:
            return []
        maps = self.word_maps(step, settings, negative=True)
        high = self._shared_high(maps, self.negative_words) if settings.shared else None
        return [
            (self._overlay(maps[i], high, settings, small=True)[0], word.label)
            for i, word in enumerate(self.negative_words)
        ]

    # Per-run panels -------------------------------------------------------------------------------------------

    def mask(self) -> Image.Image | None:
        """The inpainting mask at latent resolution (white = repaint), each latent pixel a square."""
        if self.run.mask is None:
            return None
        grey = (self.run.mask.numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(grey).resize(self.size, Image.Resampling.NEAREST)

    @cached_property
    def _shares(self) -> np.ndarray:
        """[S, T+1]: each position's share of all cross-attention (padding summed last), over pixels and layers."""
        total = sum(self.run.layers.values())
        return (
            sum(self.run.layers[b] * self.run.attention[b].float().mean((-1, -2)).numpy() for b in self.run.attention)
            / total
        )

    @cached_property
    def timeline(self) -> pd.DataFrame:
        """Per real word and step: `mass`, its share of all cross-attention (mean map value over pixels, heads and
        layers), and `concentration`, 1 − entropy / log(pixels) of its map (0 = even, 1 = one position)."""
        words = [i for i, w in enumerate(self.words) if not w.special]
        mass = word_sums(self._shares[:, :-1], self.words, axis=1)  # [S, words]
        maps = word_sums(self._maps, self.words, axis=1).reshape(self.run.steps, len(self.words), -1)
        p = maps / np.maximum(maps.sum(-1, keepdims=True), 1e-12)
        entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(-1)
        concentration = 1 - entropy / math.log(p.shape[-1]) if p.shape[-1] > 1 else np.zeros_like(entropy)
        labels = self.word_labels
        rows = [
            (step + 1, labels[w], float(mass[step, w]), float(concentration[step, w]))
            for w in words
            for step in range(self.run.steps)
        ]
        return pd.DataFrame(rows, columns=["step", "word", "mass", "concentration"])

    def timeline_chart(self, metric: str, word: int) -> Image.Image:
        """The timeline's "mass" or "concentration" per step, one line per word, `word` highlighted."""
        series = {label: rows[metric].to_numpy() for label, rows in self.timeline.groupby("word", sort=False)}
        return line_chart(series, self.word_labels[word], TIMELINE_TITLES[metric])

    @cached_property
    def budget(self) -> pd.DataFrame:
        """Per step, the share of attention on the start token, the real words, and the end + padding tokens."""
        shares = self._shares
        parts = {
            "start token": shares[:, 0],
            "words": shares[:, 1:-2].sum(-1),
            "end + padding": shares[:, -2] + shares[:, -1],
        }
        rows = [(s + 1, part, float(v[s])) for part, v in parts.items() for s in range(self.run.steps)]
        return pd.DataFrame(rows, columns=["step", "part", "share"])

    @cached_property
    def word_labels(self) -> list[str]:
        """Word labels made unique (a plot colours by label): the second 'a' becomes 'a (2)', the second chunk's start
        '⟨start⟩ (2)'; a word with an emphasis weight says it: 'red ×1.3'."""
        seen: dict[str, int] = {}
        labels = []
        for word in self.words:
            label = word.label
            weight = float(self.run.weights[word.tokens[0]]) if self.run.weights is not None else 1.0
            if weight != 1.0:
                label += f" ×{weight:.3g}"
            seen[label] = seen.get(label, 0) + 1
            labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
        return labels

    def chips(self) -> list[tuple[str, int]]:
        """(label, index) pairs for a radio of words."""
        return [(label, i) for i, label in enumerate(self.word_labels)]

    def prompt_chips(self) -> list[tuple[str, int]]:
        """`chips` of the prompt's own words, without start and end tokens: none for an empty prompt."""
        return [(label, i) for label, i in self.chips() if not self.words[i].special]

    def token_summary(self) -> str:
        """How many of the tokens the text encoder reads (75 in CLIP) the prompt used, in how many chunks, and what
        the limit cut off (runs made before prompts were chunked)."""
        chunks = sum(1 for word in self.words if word.special and word.text == "start")
        used, limit = len(self.run.tokens) - 2 * chunks, self.facts.prompt_tokens
        schedule = (self.run.recipe.prompt_schedule or {}).get("prompt", [])
        edits = ""
        if len(schedule) > 1:
            parts = [f"to step {end}: “{text}”" for end, text in schedule[:6]]
            more = f" and {len(schedule) - 6} more" if len(schedule) > 6 else ""
            edits = f" The prompt changes during the run ({'; '.join(parts)}{more}); the words shown are the first."
        if chunks > 1:
            return (
                f"{used} prompt tokens in {chunks} chunks of up to {limit}, each framed by the start and end tokens "
                f"and padded to {self.facts.text_positions} positions: the text encoder reads each chunk on its own "
                "and the UNet attends to all of them side by side." + edits
            )
        line = f"{used} of {limit} prompt tokens used, framed by the start and end tokens"
        line += f" and padded to {self.facts.text_positions} positions."
        if used >= limit and self.run.recipe.chunks is None:
            dropped = dropped_text(self.run.recipe.prompt, self.words)
            line += " **The prompt reached the limit: the text encoder never saw the rest**"
            line += f": “{dropped}”." if dropped else "."
        return line + edits

    def subword_table(self) -> str:
        """Markdown: how the tokenizer split each word (positions count from the start token, 0)."""
        rows = ["| word | tokens | positions |", "|---|---|---|"]
        for word in self.words:
            spelled = " · ".join(code(self.run.tokens[p]) for p in word.tokens)
            span = f"{word.tokens[0]}" if len(word.tokens) == 1 else f"{word.tokens[0]}–{word.tokens[-1]}"
            rows.append(f"| {word.label} | {spelled} | {span} |")
        return "\n".join(rows)

    def summary(self) -> str:
        """One line describing the run's recipe."""
        r = self.run.recipe
        task = {"txt2img": "Text-to-Image", "img2img": "Image-to-Image", "inpaint": "Inpaint"}.get(r.task)
        # The schedule type as A1111 1.9+ names it apart, when it is not the sampler's own (older runs have none).
        schedule = f" · {r.schedule}" if (r.schedule or AUTOMATIC) != AUTOMATIC else ""
        line = f"{task} · {r.sampler}{schedule} · {r.steps} steps · CFG {r.guidance_scale} · seed {r.seed}"
        line += f" · {r.width}×{r.height} · model {r.model} · {self.run.unet_calls} UNet calls"
        if r.strength is not None:
            line += f" · strength {r.strength}"
        return line


@dataclass(frozen=True)
class ChartArea:
    """The plotting rectangle of a line chart, and where a step and a value land in it."""

    left: int
    top: int
    right: int
    bottom: int
    steps: int
    high: float  # the value at the top edge; the bottom edge is 0

    def x(self, step: int) -> int:
        """The column of a 0-based step."""
        return round(self.left + (self.right - self.left) * step / max(self.steps - 1, 1))

    def y(self, value: float) -> int:
        return round(self.bottom - (self.bottom - self.top) * value / self.high)


def chart_area(steps: int, largest: float) -> ChartArea:
    """Room for the value ticks on the left, the line labels on the right, the title and the step ticks."""
    width, height = CHART_SIZE
    return ChartArea(100, 60, width - 170, height - 64, steps, axis_top(largest))


def axis_top(value: float) -> float:
    """`value` rounded up to 1, 2 or 5 times a power of ten, so that the ticks are round numbers."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value * (1 - 1e-9))


def line_chart(series: dict[str, np.ndarray], chosen: str, title: str) -> Image.Image:
    """Lines over the steps, drawn to be read on a projector: the `chosen` one thick and in colour, the others thin
    and grey; each line is named at its end where there is room, the chosen one always."""
    steps = max((len(values) for values in series.values()), default=1)
    area = chart_area(steps, max((float(values.max()) for values in series.values()), default=0.0))
    image = Image.new("RGB", CHART_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, title_font = ImageFont.load_default(CHART_FONT), ImageFont.load_default(CHART_FONT + 4)
    draw.text((CHART_SIZE[0] // 2, 14), title, fill=AXIS_COLOUR, font=title_font, anchor="mt")
    for value in (0, area.high / 2, area.high):
        y = area.y(value)
        draw.line([(area.left, y), (area.right, y)], fill=GRID_COLOUR, width=1)
        draw.text((area.left - 10, y), f"{value:.3g}", fill=AXIS_COLOUR, font=font, anchor="rm")
    every = next(n for n in (1, 2, 5, 10, 20, 50, 100) if steps / n <= 10)
    for step in ([1] if every > 2 else []) + list(range(every, steps + 1, every)):  # step 1 too, unless "1 2" crowd
        draw.text((area.x(step - 1), area.bottom + 8), str(step), fill=AXIS_COLOUR, font=font, anchor="mt")
    draw.text(((area.left + area.right) // 2, CHART_SIZE[1] - 4), "step", fill=AXIS_COLOUR, font=font, anchor="mb")
    draw.line([(area.left, area.top), (area.left, area.bottom), (area.right, area.bottom)], fill=AXIS_COLOUR, width=2)

    # The chosen line last, on top of the others; its label first, so that it always has room.
    for label in sorted(series, key=lambda name: name == chosen):
        colour, width = (CHOSEN_COLOUR, 6) if label == chosen else (OTHER_COLOUR, 2)
        points = [(area.x(step), area.y(value)) for step, value in enumerate(series[label])]
        if len(points) == 1:
            (x, y), r = points[0], width
            draw.ellipse([(x - r, y - r), (x + r, y + r)], fill=colour)
        else:
            draw.line(points, fill=colour, width=width, joint="curve")

    ends = {label: area.y(values[-1]) for label, values in series.items()}
    rows = label_rows(ends, chosen, CHART_FONT + 2, (area.top - 20, CHART_SIZE[1] - 30))
    text_x, room = area.right + 26, CHART_SIZE[0] - area.right - 30
    for label, y in rows.items():
        colour = CHOSEN_COLOUR if label == chosen else LABEL_COLOUR
        draw.line([(area.right + 4, ends[label]), (text_x - 4, y)], fill=colour, width=1)  # a leader to its line
        draw.text((text_x, y), fitted(label, font, room), fill=colour, font=font, anchor="lm")
    return image


def label_rows(ends: dict[str, int], chosen: str, gap: int, span: tuple[int, int]) -> dict[str, int]:
    """Where to write each line's label: as near its line's end as `gap` pixels between labels allow, within
    `span`. When they cannot all fit, the chosen line's label and those that fit at their lines' ends."""
    top, bottom = span
    order = sorted(ends, key=ends.get)
    if len(order) * gap > bottom - top:
        kept: dict[str, int] = {}
        for label in sorted(ends, key=lambda name: name != chosen):
            if all(abs(ends[label] - y) >= gap for y in kept.values()):
                kept[label] = ends[label]
        return kept
    rows: dict[str, int] = {}
    lowest = top - gap
    for label in order:  # push each label down below the one above it ...
        lowest = rows[label] = max(ends[label], lowest + gap)
    highest = bottom + gap
    for label in reversed(order):  # ... then up above the one below it, where that overflowed the bottom
        highest = rows[label] = min(rows[label], highest - gap)
    return rows


def fitted(text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """`text`, cut short with an ellipsis if it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


# The panels ---------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """What a panel is drawn from: the view, a 0-based step and the heatmap settings. The work that several panels
    share (the ε panels' common scale, the heatmap and its colour bar) is done once per frame."""

    view: ExplainView
    step: int
    settings: HeatmapSettings

    @cached_property
    def noise(self) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        return self.view.noise(self.step)

    @cached_property
    def heatmap(self) -> tuple[Image.Image, str]:
        return self.view.heatmap(self.step, self.settings)


@dataclass(frozen=True)
class Presented:
    """How presentation mode shows a panel: a short label, and one line to read from the back of a room."""

    label: str
    caption: str
    order: int  # left to right, after the final image


@dataclass(frozen=True)
class Panel:
    """One panel of the Explain view: what it draws and how the Explain tab shows it."""

    name: str
    draw: Callable[[Frame], object]
    label: str = ""
    # "image" (at the panels' height), "sheet" (an image at its own size), "gallery" (a list of (image, caption)),
    # "markdown" or "html" (a line of text)
    kind: str = "image"
    # How its images are sent. Encoding is on the scrubbing path: on a busy 2-core CPU, PNG (zlib level 6) took
    # 20–120 ms per 256² panel and JPEG under 2 ms. Sharp, flat pictures (the channel tiles) stay PNG (no ringing).
    format: str = "jpeg"
    caption: Caption | None = None  # a template: the tab fills in the model's numbers
    place: str = "inside"  # where the tab shows it: one of `PLACES` in sdplay/explain/ui.py
    scale: int = 1  # its width beside the other panels of a row
    classes: tuple[str, ...] = ()  # CSS classes (tests and styles find a panel by them)
    value: str | None = None  # a text panel's words before any run
    per_run: bool = False  # drawn once per run, not at each step
    only: Callable[[ExplainView], bool] | None = None  # shown only for the runs this holds for (None: all)
    presented: Presented | None = None  # shown by presentation mode, each step of it sent with the page


def inpainted(view: ExplainView) -> bool:
    return view.run.mask is not None


def blended(frame: Frame) -> Image.Image | None:
    """The latents after the known region is put back (inpaint), None for other runs."""
    return frame.view.preview("blended", frame.step) if inpainted(frame.view) else None


# The registry, in the order each place of the tab shows its panels.
PANELS: list[Panel] = [
    Panel(
        "label", lambda f: f.view.step_label(f.step), kind="markdown", caption=CAPTIONS["step"], place="step",
        value="Press **Explain** to record a run, or replay a saved one at the bottom.",
    ),
    Panel(
        "heatmap", lambda f: f.heatmap[0], "Where the word looks", caption=CAPTIONS["heatmap"], place="heatmap",
        classes=("heatmap",), presented=Presented("Word heatmap", "Bright: the parts that look at the word.", 3),
    ),
    Panel("scale", lambda f: f.heatmap[1], kind="html", place="heatmap"),
    Panel(
        "x_t", lambda f: f.view.preview("x_t", f.step), "x_t · noisy latent", caption=CAPTIONS["x_t"],
        presented=Presented("x_t · noisy", "What the model is cleaning now.", 2),
    ),
    Panel(
        "x0", lambda f: f.view.x0(f.step), "x̂₀ · predicted image", caption=CAPTIONS["x0"], classes=("x0",),
        presented=Presented("x̂₀ · prediction", "The model's guess of the end result, now.", 1),
    ),
    Panel("eps_uncond", lambda f: f.noise[0], "ε_uncond", caption=CAPTIONS["eps_uncond"]),
    Panel("eps_cond", lambda f: f.noise[1], "ε_cond", caption=CAPTIONS["eps_cond"]),
    Panel(
        "guidance", lambda f: f.noise[2], "Guidance term", caption=CAPTIONS["guidance"],
        presented=Presented("Guidance term", "What the prompt adds (grey: nothing).", 4),
    ),
    Panel("eps_note", lambda f: f.noise[3], kind="markdown"),
    Panel(
        "channels", lambda f: f.view.channels(f.step), "Latent channels", kind="sheet", format="png",
        caption=CAPTIONS["channels"], place="latent", scale=2,
    ),
    Panel(
        "mask", lambda f: f.view.mask(), "Mask at latent resolution", format="png", caption=CAPTIONS["mask"],
        place="latent", per_run=True, only=inpainted,
    ),
    Panel(
        "blended", blended, "After blending the known region", caption=CAPTIONS["blended"], place="latent",
        only=inpainted,
    ),
    Panel(
        "layers", lambda f: f.view.layer_matrix(f.step, f.settings), "The chosen word in each UNet block",
        kind="gallery", caption=CAPTIONS["layers"], place="words",
    ),
    Panel(
        "negative", lambda f: f.view.negative_maps(f.step, f.settings), "Negative prompt words", kind="gallery",
        caption=CAPTIONS["negative"], place="negative",
    ),
]  # fmt: skip


def step_panels() -> list[Panel]:
    """The registry's panels that change with the step: what a redraw draws."""
    return [panel for panel in PANELS if not panel.per_run]


def presented() -> list[Panel]:
    """The registry's panels that presentation mode shows, left to right."""
    return sorted((panel for panel in PANELS if panel.presented), key=lambda panel: panel.presented.order)


# The word maps' scales and steps as the tabs offer them (their radios' choices).
PER_WORD, SHARED, RANGE = "Per word", "Shared scale", "A range of steps"


def heatmap_settings(
    word: int, colormap: str, opacity: float, scale: str, steps: tuple[int, int] | None = None
) -> HeatmapSettings:
    """The settings the tab's controls choose: `scale` is PER_WORD or SHARED; an unknown colour map is viridis."""
    return HeatmapSettings(word, colormap if colormap in COLORMAPS else "viridis", opacity, scale == SHARED, steps)


def replay_view(path: str | Path, limits: Limits = Limits()) -> ExplainView:
    """A saved run, ready to draw. Uploads are untrusted: whatever `load_run` lets through that still cannot be
    drawn is a `UserError` too."""
    run = load_run(path, limits)
    try:
        view = ExplainView(run)
        view.summary()
        view.draw(run.steps - 1, HeatmapSettings(word=0))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as error:
        raise UserError(f"Could not replay this Explain file: {error.__class__.__name__}: {error}") from error
    return view


def export_name(recipe: Recipe) -> str:
    """A readable file name for a run: the prompt's first words and the seed."""
    slug = re.sub(r"[^a-z0-9]+", "-", recipe.prompt.lower()).strip("-")[:40].strip("-")
    return f"explain-{slug or 'run'}-{recipe.seed}.safetensors"
