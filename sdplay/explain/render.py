"""Draw every panel of the Explain view from an `ExplainRun`: plain numpy/PIL on cached arrays, no model needed.

`ExplainView` wraps one run with what every redraw reuses (word groups, layer-averaged maps, scales); `draw()`
renders everything that depends on the step, cheaply enough to follow a scrubber.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from sdplay.errors import UserError
from sdplay.explain.capture import ExplainRun
from sdplay.explain.export import load_run
from sdplay.previews import latents_to_rgb
from sdplay.tokenizer import END_OF_WORD, byte_to_unicode

# Panels are drawn at the final image's size, brought into this range: tiny models make 64 px images, which a
# browser would blur when stretching them; big ones would make every redraw slow.
DISPLAY_MIN, DISPLAY_MAX = 256, 512
PROMPT_TOKENS = 75  # CLIP reads 77 positions: the start token, 75 of the prompt's tokens, the end token
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


@dataclass(frozen=True)
class Word:
    """A word as the tokenizer split it: its text and its positions in the run's tokens."""

    text: str
    tokens: tuple[int, ...]
    special: bool = False  # the start or end token

    @property
    def label(self) -> str:
        return f"⟨{self.text}⟩" if self.special else self.text


def token_text(tokens: list[str]) -> str:
    """CLIP's byte-level BPE spells bytes as printable characters and ends words with `</w>`: undo both."""
    to_byte = {char: byte for byte, char in byte_to_unicode().items()}
    spelled = "".join(tokens).replace(END_OF_WORD, "")
    return bytes(to_byte[c] for c in spelled if c in to_byte).decode("utf-8", errors="replace")


def words_of(tokens: list[str]) -> list[Word]:
    """Merge subword tokens into words (a word ends at a token ending in `</w>`), framed by start and end."""
    words = [Word("start", (0,), special=True)]
    pending: list[int] = []
    for position in range(1, len(tokens) - 1):
        pending.append(position)
        if tokens[position].endswith(END_OF_WORD):
            words.append(Word(token_text([tokens[p] for p in pending]), tuple(pending)))
            pending = []
    if pending:  # a word cut in the middle by the 75-token limit
        words.append(Word(token_text([tokens[p] for p in pending]), tuple(pending)))
    words.append(Word("end", (len(tokens) - 1,), special=True))
    return words


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


def block_label(block: str, height: int, width: int) -> str:
    """'down_blocks.1' at 16×16 -> 'down 16×16'; 'mid_block' -> 'mid ...'."""
    return f"{block.split('_')[0]} {height}×{width}"


def block_order(block: str) -> tuple[int, int]:
    """Down blocks (by index), then the middle, then up blocks: the order data flows through the UNet."""
    kind, _, index = block.partition(".")
    return {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[kind], int(index or 0)


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


@dataclass
class Panels:
    """Everything that changes with the step (and the heatmap settings)."""

    label: str  # markdown: step k of S, t, σ
    x_t: Image.Image
    x0: Image.Image
    eps_uncond: Image.Image
    eps_cond: Image.Image
    guidance: Image.Image
    eps_note: str  # markdown: the scales the three ε panels use
    channels: Image.Image
    heatmap: Image.Image
    scale: str  # HTML colour bar with the heatmap's range
    layers: list[tuple[Image.Image, str]]
    negative: list[tuple[Image.Image, str]]
    blended: Image.Image | None  # inpaint only


class ExplainView:
    """One run, ready to draw: the per-run work (layer averages, word groups, scales) is done once here."""

    def __init__(self, run: ExplainRun) -> None:
        self.run = run
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
            name: [latents_to_rgb(latents, run.latent_rgb, scale=1) for latents in tensor]
            for name, tensor in (("x_t", run.latents), ("x0", run.x0), ("blended", run.blended))
            if tensor is not None
        }
        self._block_maps = {block: run.attention[block].numpy() for block in self.blocks}  # fp16, no copy
        self._maps = run.averaged_attention().numpy()  # [S, T, h, w]
        self._negative_maps = run.averaged_attention(negative=True).numpy() if run.negative_attention else None
        self._word_matrix = self._grouping(self.words, len(run.tokens))
        self._negative_matrix = self._grouping(self.negative_words, len(run.negative_tokens))
        # One fixed grey scale per row of channel tiles, so that steps compare; percentiles ignore outliers.
        self._channel_scales = [float(np.percentile(np.abs(t.numpy()), 99.5)) or 1.0 for t in (run.latents, run.x0)]
        self._decoded: dict[int, Image.Image] = {}

    @staticmethod
    def _grouping(words: list[Word], tokens: int) -> np.ndarray:
        """[words, tokens] 0/1 matrix: a word's map is the sum of its tokens' maps (their attention adds up)."""
        matrix = np.zeros((len(words), tokens), dtype=np.float32)
        for row, word in enumerate(words):
            matrix[row, list(word.tokens)] = 1
        return matrix

    # Per-step panels ------------------------------------------------------------------------------------------

    def draw(self, step: int, settings: HeatmapSettings) -> Panels:
        """Every step-dependent panel for `step` (0-based)."""
        eps_uncond, eps_cond, guidance, eps_note = self.noise(step)
        heatmap, scale = self.heatmap(step, settings)
        return Panels(
            label=self.step_label(step),
            x_t=self.preview("x_t", step),
            x0=self.x0(step),
            eps_uncond=eps_uncond,
            eps_cond=eps_cond,
            guidance=guidance,
            eps_note=eps_note,
            channels=self.channels(step),
            heatmap=heatmap,
            scale=scale,
            layers=self.layer_matrix(step, settings),
            negative=self.negative_maps(step, settings),
            blended=self.preview("blended", step) if "blended" in self._previews else None,
        )

    def step_label(self, step: int) -> str:
        """Markdown: the step, its timestep and noise level, and where strength started the schedule."""
        run = self.run
        label = f"**Step {step + 1} of {run.steps}** · t = {run.timesteps[step]:.0f} · σ = {run.sigmas[step]:.3g}"
        if run.first_step:
            total, strength = run.recipe["steps"], run.recipe.get("strength")
            label += (
                f" · strength {strength} starts the {total}-step schedule at step {run.first_step + 1}: "
                f"this is schedule step {run.first_step + step + 1} of {total}"
            )
        return label

    def preview(self, name: str, step: int) -> Image.Image:
        """The cheap linear latent -> RGB preview of "x_t", "x0" or "blended", at the panel size."""
        return self._previews[name][step].resize(self.size, Image.Resampling.BILINEAR)

    def x0(self, step: int, decode: Callable[[torch.Tensor], Image.Image] | None = None) -> Image.Image:
        """x̂₀ through the linear preview, or through `decode` (the real VAE); decoded steps are kept."""
        if decode is not None and step not in self._decoded:
            self._decoded[step] = decode(self.run.x0[step]).convert("RGB").resize(self.size, Image.Resampling.LANCZOS)
        return self._decoded[step] if step in self._decoded else self.preview("x0", step)

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
                f" · the guidance term is drawn ×{eps_scale / guidance_scale:.1f} brighter · CFG scale "
                f"{run.recipe['guidance_scale']} · guidance rms {rms:.3f} (latent units)"
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
        maps = self._negative_maps if negative else self._maps
        matrix = self._negative_matrix if negative else self._word_matrix
        summed = maps[self._steps(step, settings)].sum(0)  # [T, h, w]
        return np.einsum("wt,thx->whx", matrix, summed)

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
        mass = self._shares[:, :-1] @ self._word_matrix.T  # [S, words]
        maps = np.einsum("wt,sthx->swhx", self._word_matrix, self._maps).reshape(self.run.steps, len(self.words), -1)
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
        """Word labels made unique (a plot colours by label): the second 'a' becomes 'a (2)'."""
        seen: dict[str, int] = {}
        labels = []
        for word in self.words:
            seen[word.label] = seen.get(word.label, 0) + 1
            labels.append(word.label if seen[word.label] == 1 else f"{word.label} ({seen[word.label]})")
        return labels

    def chips(self) -> list[tuple[str, int]]:
        """(label, index) pairs for a radio of words."""
        return [(label, i) for i, label in enumerate(self.word_labels)]

    def token_summary(self) -> str:
        """How many of the 75 prompt tokens the prompt used, and what was cut off at the limit."""
        used = len(self.run.tokens) - 2
        line = f"{used} of {PROMPT_TOKENS} prompt tokens used, framed by the start and end tokens"
        line += f" and padded to {PROMPT_TOKENS + 2} positions."
        if used >= PROMPT_TOKENS:
            dropped = dropped_text(str(self.run.recipe.get("prompt", "")), self.words)
            line += " **The prompt reached the limit: the text encoder never saw the rest**"
            line += f": “{dropped}”." if dropped else "."
        return line

    def subword_table(self) -> str:
        """Markdown: how the tokenizer split each word (positions count from the start token, 0)."""
        rows = ["| word | tokens | positions |", "|---|---|---|"]
        for word in self.words:
            spelled = " · ".join(f"`{self.run.tokens[p]}`" for p in word.tokens)
            span = f"{word.tokens[0]}" if len(word.tokens) == 1 else f"{word.tokens[0]}–{word.tokens[-1]}"
            rows.append(f"| {word.label} | {spelled} | {span} |")
        return "\n".join(rows)

    def summary(self) -> str:
        """One line describing the run's recipe."""
        r = self.run.recipe
        task = {"txt2img": "Text-to-Image", "img2img": "Image-to-Image", "inpaint": "Inpaint"}.get(str(r["task"]))
        line = f"{task} · {r['sampler']} · {r['steps']} steps · CFG {r['guidance_scale']} · seed {r['seed']}"
        line += f" · {r['width']}×{r['height']} · model {r['model']} · {self.run.unet_calls} UNet calls"
        if "strength" in r:
            line += f" · strength {r['strength']}"
        return line


def replay_view(path: str | Path) -> ExplainView:
    """A saved run, ready to draw. Uploads are untrusted: whatever `load_run` lets through that still cannot be
    drawn (a recipe without its fields, a colour map that does not fit the latents) is a `UserError` too."""
    run = load_run(path)
    try:
        view = ExplainView(run)
        view.summary()
        view.draw(run.steps - 1, HeatmapSettings(word=0))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
        raise UserError(f"Could not replay this Explain file: {error.__class__.__name__}: {error}") from error
    return view


def vae_decode(vae, latents: torch.Tensor) -> Image.Image:
    """Decode one [C, h, w] latent (in the UNet's scaled space) with a diffusers VAE: the exact x̂₀ image."""
    parameter = next(vae.parameters())
    with torch.no_grad():
        scaled = latents[None].to(parameter.device, parameter.dtype) / vae.config.scaling_factor
        pixels = vae.decode(scaled).sample[0].float().cpu()
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def export_name(recipe: dict) -> str:
    """A readable file name for a run: the prompt's first words and the seed."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(recipe.get("prompt", "")).lower()).strip("-")[:40].strip("-")
    return f"explain-{slug or 'run'}-{recipe.get('seed')}.safetensors"
