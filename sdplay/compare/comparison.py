"""Same-seed A/B comparisons and word ablation: build B from A, and measure what changed, in the image and inside
(each step's predicted image x̂₀, each word's attention). Plain logic on `ExplainRun`s: no Gradio, no model.
"""

import difflib
import random
import re
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from PIL import Image

from sdplay.explain.capture import ExplainRun
from sdplay.explain.render import COLORMAPS, ExplainView, HeatmapSettings, Word, word_sums, words_of
from sdplay.runtime.errors import UserError
from sdplay.runtime.request import MAX_SEED, GenerationRequest, Limits, validated

# What B may differ in, as the UI names it -> the request field ("word" swaps one word of the prompt). Size is not
# offered: x̂₀ and the attention maps of two sizes cannot be compared pixel for pixel.
FIELDS = {
    "Word": "word",
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "CFG scale": "guidance_scale",
    "Sampler": "sampler",
    "Schedule type": "schedule",
    "Steps": "steps",
    "Seed": "seed",
}
# A word swap is written "old -> new" (or with an arrow), as one value, like every other field.
SWAP = re.compile(r"\s*(?:->|→)\s*")
# The difference image multiplies |A − B| by a power of two up to this: enough to see a small change, and a power of
# two so that the label's "×8" is easy to compare between two comparisons.
MAX_DIFFERENCE_GAIN = 32
# A pixel counts as changed when a channel moved by more than this (of 255): below it is JPEG-like noise to the eye.
CHANGED_LEVELS = 8
# Ablation modes: the word deleted from the prompt, or given an A1111 emphasis weight.
REMOVED = "removed"
ABLATIONS = (REMOVED, "0", "0.5", "1.5")
# A word of a prompt as ablation sees it: letters only (numbers in the prompt are weights or `when`s of the syntax).
PROMPT_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Contrast:
    """A preset contrast pair: A is `prompt` (with `a_value` in `field`, if given); B differs in `field` only."""

    name: str
    prompt: str
    field: str  # a value of FIELDS
    value: str  # B's value, as typed in the UI ("red -> blue" for a word swap)
    a_value: str | None = None  # A's own value of `field`, when the pair needs one (CFG 1 vs 4)


SHAPES = "a large red circle on the left on a gray background"
SHAPES_CONTRASTS = (
    Contrast("red vs blue", SHAPES, "word", "red -> blue"),
    Contrast("small vs large", "a small red circle in the center on a gray background", "word", "small -> large"),
    Contrast("left vs right", SHAPES, "word", "left -> right"),
    Contrast("CFG 1 vs 4", SHAPES, "guidance_scale", "4", a_value="1"),
    Contrast("CFG 4 vs 8", SHAPES, "guidance_scale", "8", a_value="4"),
    Contrast(
        "two objects, colours swapped",
        "a small red circle on the left and a small blue square on the right on a gray background",
        "prompt",
        "a small blue circle on the left and a small red square on the right on a gray background",
    ),
)
LIGHTHOUSE = "a photo of a lighthouse at dawn, soft light"
SD_CONTRASTS = (
    Contrast("style: photo vs watercolor", LIGHTHOUSE, "word", "photo -> watercolor painting"),
    Contrast("artist: none vs Hokusai", "a great wave at sea", "prompt", "a great wave at sea, by Hokusai"),
    Contrast("red vs blue", "a photo of a red car on a street", "word", "red -> blue"),
    Contrast("CFG 1 vs 4", LIGHTHOUSE, "guidance_scale", "4", a_value="1"),
    Contrast("CFG 4 vs 8", LIGHTHOUSE, "guidance_scale", "8", a_value="4"),
)


def presets_for(vocabulary: tuple[str, ...]) -> list[Contrast]:
    """The preset pairs a model can draw: for a model with a closed vocabulary, those whose every word it knows;
    for an open one, the Stable Diffusion pairs (styles and artists mean nothing to a closed world)."""
    if not vocabulary:
        return list(SD_CONTRASTS)
    known = {word.lower() for word in vocabulary}
    return [
        pair
        for pair in SHAPES_CONTRASTS
        if all(w.lower() in known for w in PROMPT_WORD.findall(f"{pair.prompt} {pair.value}"))
    ]


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """`request` with a drawn seed if it asks for a random one (-1): A and B must share one."""
    return request if request.seed != -1 else replace(request, seed=random.randint(0, MAX_SEED))


def swap_word(prompt: str, old: str, new: str) -> str:
    """`prompt` with every whole-word `old` replaced by `new` (as A1111's Prompt S/R), or a `UserError`."""
    pattern = re.compile(rf"(?<!\w){re.escape(old)}(?!\w)")
    if not old or not pattern.search(prompt):
        raise UserError(f"The prompt has no word {old!r} to swap: write the swap as 'old -> new', e.g. 'red -> blue'.")
    return pattern.sub(lambda _: new, prompt)


def variant(request: GenerationRequest, field: str, value: object, limits: Limits = Limits()) -> GenerationRequest:
    """B: `request` (same seed) with one `field` (a value of FIELDS) set to `value`, validated like any request."""
    if field == "word":
        old, new = _swap_parts(str(value))
        changed = replace(request, prompt=swap_word(request.prompt, old, new))
    elif field in FIELDS.values():
        changed = replace(request, **{field: value})
    else:
        raise UserError(f"B may differ in one of {', '.join(FIELDS)}; got {field!r}.")
    return validated(changed, limits)


def pair_labels(a: GenerationRequest, b: GenerationRequest, field: str) -> tuple[str, str]:
    """Short names for A and B that say how they differ: 'red' and 'blue', 'CFG scale 1' and 'CFG scale 4'."""
    if field == "word":
        before = a.prompt.split()
        after = b.prompt.split()
        changed = [(x, y) for x, y in zip(before, after, strict=False) if x != y]
        if len(before) == len(after) and changed:
            return changed[0]
    if field in ("prompt", "negative_prompt", "word"):
        return "A", "B"
    name = next(label for label, value in FIELDS.items() if value == field)

    def shown(request: GenerationRequest) -> str:
        value = getattr(request, field)
        return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"

    return shown(a), shown(b)


def _swap_parts(value: str) -> tuple[str, str]:
    parts = SWAP.split(value.strip(), maxsplit=1)
    if len(parts) != 2 or not parts[0]:
        raise UserError(f"Write a word swap as 'old -> new', e.g. 'red -> blue'; got {value!r}.")
    return parts[0], parts[1]


# Ablation -------------------------------------------------------------------------------------------------------


def prompt_words(prompt: str) -> list[re.Match]:
    """The words of `prompt` that ablation can pick, in order (BREAK is syntax, not a word)."""
    return [match for match in PROMPT_WORD.finditer(prompt) if match.group() != "BREAK"]


def word_index(prompt: str, word: str | int) -> int:
    """The index among `prompt_words` of `word`: an index already, or a word's text (its first occurrence)."""
    words = prompt_words(prompt)
    if isinstance(word, int) or str(word).strip().isdigit():
        index = int(word)
        if not 0 <= index < len(words):
            raise UserError(f"The prompt has {len(words)} words; there is no word number {index}.")
        return index
    for index, match in enumerate(words):
        if match.group().lower() == str(word).strip().lower():
            return index
    raise UserError(f"The prompt has no word {word!r} to ablate.")


def ablation_weight(mode: str) -> float | None:
    """None for removal, else the weight (a number, at most 10: A1111's weights are small factors)."""
    if str(mode).strip().lower() == REMOVED:
        return None
    try:
        weight = float(mode)
    except (TypeError, ValueError):
        raise UserError(f"The ablation is '{REMOVED}' or a weight such as 0, 0.5 or 1.5; got {mode!r}.") from None
    if not 0 <= weight <= 10:
        raise UserError(f"An ablation weight must be between 0 and 10, got {mode!r}.")
    return weight


def ablate(request: GenerationRequest, word: int, mode: str, limits: Limits = Limits()) -> GenerationRequest:
    """The same request (same seed) with word `word` (an index of `prompt_words`) removed, or at an emphasis weight
    written in A1111's syntax `(word:w)`: inside brackets that already weigh it, the weights multiply."""
    prompt = request.prompt
    match = prompt_words(prompt)[word_index(prompt, word)]
    weight = ablation_weight(mode)
    if weight is None:
        # One space where the word and its spaces were: the rest of the prompt is kept as typed.
        before, after = prompt[: match.start()].rstrip(" "), prompt[match.end() :].lstrip(" ")
        changed = f"{before} {after}" if before and after else before + after
    else:
        changed = f"{prompt[: match.start()]}({match.group()}:{weight:g}){prompt[match.end() :]}"
    return validated(replace(request, prompt=changed.strip()), limits)


def ablation_label(word: str, mode: str) -> str:
    weight = ablation_weight(mode)
    return f"without {word!r}" if weight is None else f"{word!r} at weight {weight:g}"


# Differences ----------------------------------------------------------------------------------------------------


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.int16)


def _difference(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> np.ndarray:
    """[H, W]: |A − B| per pixel, the largest of its channels (0–255)."""
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        raise UserError(f"A and B have different sizes ({pa.shape[1]}×{pa.shape[0]}, {pb.shape[1]}×{pb.shape[0]}).")
    return np.abs(pa - pb).max(-1)


def difference_gain(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> int:
    """The power of two (1 to MAX_DIFFERENCE_GAIN) that brings the 99th percentile of |A − B| nearest to full scale
    without passing it: a faint change is amplified until it shows, a large one is not clipped away."""
    typical = float(np.percentile(_difference(a, b), 99))
    if typical <= 0:
        return 1
    return int(min(MAX_DIFFERENCE_GAIN, max(1, 2 ** np.floor(np.log2(255 / typical)))))


def difference_image(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, gain: int | None = None) -> Image.Image:
    """|A − B| per pixel (the largest of its channels) × `gain` (None: `difference_gain`) through the inferno colour
    map: black where the images agree, yellow where they differ most."""
    gain = difference_gain(a, b) if gain is None else gain
    levels = np.clip(_difference(a, b) * gain, 0, 255).astype(np.uint8)
    return Image.fromarray(COLORMAPS["inferno"][levels])


def pixel_difference(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> dict[str, float]:
    """The mean |A − B| (of 255) and the share of pixels where a channel moved by more than CHANGED_LEVELS."""
    delta = np.abs(_pixels(a) - _pixels(b))
    return {"mean": float(delta.mean()), "changed_share": float((delta.max(-1) > CHANGED_LEVELS).mean())}


def paired_step(step: int, steps_a: int, steps_b: int) -> int:
    """B's step at the same point of the run as A's `step` (0-based): itself when both have the same count."""
    if steps_a == steps_b:
        return step
    return round(step * (steps_b - 1) / max(steps_a - 1, 1))


def latent_difference(a: ExplainRun, b: ExplainRun, name: str = "x0") -> np.ndarray:
    """[A's steps]: the mean |A − B| of a per-step latent tensor of the runs ("x0": the predicted clean latents x̂₀;
    "latents": x_t, the trajectory itself), B's step taken at the same point of its run. Zero for identical runs."""
    ours, theirs = getattr(a, name), getattr(b, name)
    if ours.shape[1:] != theirs.shape[1:]:
        raise UserError("A and B have latents of different sizes: compare runs of one size and model.")
    pairs = [paired_step(s, a.steps, b.steps) for s in range(a.steps)]
    return (ours.float() - theirs[pairs].float()).abs().mean((1, 2, 3)).numpy()


def x0_difference(a: ExplainRun, b: ExplainRun) -> np.ndarray:
    """[A's steps]: mean |x̂₀_A − x̂₀_B| at each step: how early the two runs' predictions of the image part."""
    return latent_difference(a, b, "x0")


def split_step(differences: np.ndarray) -> int | None:
    """The first step (1-based) where x̂₀ differs by at least half as much as it ever does in the run: where A and B
    part. None if they never differ.

    Not half the final difference: on the bundled model's contrast pairs x̂₀ is apart from the first step and the
    difference then shrinks (CFG 1 vs 4) or wanders, so "half the final" named step 1 for every pair."""
    largest = float(differences.max()) if len(differences) else 0.0
    if largest <= 0:
        return None
    return int(np.argmax(differences >= largest / 2)) + 1


def word_attention(run: ExplainRun) -> tuple[list[Word], np.ndarray]:
    """The run's words and [words, h, w]: each word's share of each latent pixel's attention, averaged over steps
    and layers."""
    words = words_of(run.tokens)
    return words, word_sums(run.averaged_attention().numpy(), words, axis=1).mean(0)


def aligned_words(a: list[Word], b: list[Word]) -> dict[int, int]:
    """For each word of A, the word of B in its place (same text, or the one a swap put there, word for word);
    a word that B removed is absent."""
    matcher = difflib.SequenceMatcher(None, [w.label for w in a], [w.label for w in b], autojunk=False)
    pairs = {}
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            pairs |= dict(zip(range(a0, a1), range(b0, b1), strict=True))
    return pairs


@dataclass(frozen=True)
class WordShift:
    """How one word of A attends in B: its share of all attention in each, and the mean |Δ| of its map."""

    word: str
    word_b: str | None  # the word in its place in B: itself, a swap's new word, or None where B removed it
    index_a: int
    index_b: int | None
    mass_a: float
    mass_b: float | None
    shift: float | None  # mean over pixels of |map_B − map_A|
    change: np.ndarray | None  # [h, w]: map_B − map_A


def attention_shift(a: ExplainRun, b: ExplainRun) -> list[WordShift]:
    """Every real word of A (not the start/end tokens) and how its attention changed in B. Zero for identical runs."""
    words_a, maps_a = word_attention(a)
    words_b, maps_b = word_attention(b)
    if maps_a.shape[1:] != maps_b.shape[1:]:
        raise UserError("A and B have attention maps of different sizes: compare runs of one size and model.")
    pairs = aligned_words(words_a, words_b)
    shifts = []
    for i, word in enumerate(words_a):
        if word.special:
            continue
        j = pairs.get(i)
        change = maps_b[j] - maps_a[i] if j is not None else None
        shifts.append(
            WordShift(
                word=word.text,
                word_b=words_b[j].text if j is not None else None,
                index_a=i,
                index_b=j,
                mass_a=float(maps_a[i].mean()),
                mass_b=float(maps_b[j].mean()) if j is not None else None,
                shift=float(np.abs(change).mean()) if change is not None else None,
                change=change,
            )
        )
    return shifts


def change_image(change: np.ndarray, scale: float, size: tuple[int, int]) -> Image.Image:
    """A signed attention change as colour: red where B attends more, blue where less, black where equal; `scale`
    is the change drawn at full strength (one scale for all words, so that they compare). The square root of the
    change is drawn: on one shared scale the words that moved little would otherwise all be black."""
    signed = np.sign(change) * np.sqrt(np.clip(np.abs(change) / max(scale, 1e-8), 0, 1))
    pixels = np.zeros((*signed.shape, 3), dtype=np.float32)
    pixels[..., 0] = np.maximum(signed, 0) * 255
    pixels[..., 2] = np.maximum(-signed, 0) * 255
    pixels[..., 1] = np.abs(signed) * 60  # a little green lifts both colours off black on a projector
    return Image.fromarray(pixels.round().astype(np.uint8)).resize(size, Image.Resampling.NEAREST)


def overlay(view: ExplainView, values: np.ndarray, high: float, opacity: float = 0.6) -> Image.Image:
    """A word map coloured (viridis, from 0 to `high`) over the run's final image at the panel size."""
    up = np.asarray(Image.fromarray(values.astype(np.float32)).resize(view.size, Image.Resampling.BICUBIC))
    index = np.clip(up / max(high, 1e-8) * 255 + 0.5, 0, 255).astype(np.uint8)
    base = np.asarray(view.image, dtype=np.float32)
    pixels = base * (1 - opacity) + COLORMAPS["viridis"][index] * opacity
    return Image.fromarray(pixels.round().astype(np.uint8))


@dataclass
class Comparison:
    """Two recorded runs, A and B, ready to show side by side: their images, x̂₀ at a step, a word's attention."""

    a: ExplainRun
    b: ExplainRun
    label_a: str = "A"
    label_b: str = "B"

    @cached_property
    def views(self) -> tuple[ExplainView, ExplainView]:
        return ExplainView(self.a), ExplainView(self.b)

    @cached_property
    def words(self) -> dict[int, int]:
        return aligned_words(self.views[0].words, self.views[1].words)

    @cached_property
    def differences(self) -> np.ndarray:
        return x0_difference(self.a, self.b)

    @cached_property
    def trajectory(self) -> np.ndarray:
        """The mean |x_t,A − x_t,B| entering each step: 0 at step 1 with one seed, then growing as the paths part."""
        return latent_difference(self.a, self.b, "latents")

    @cached_property
    def shifts(self) -> list[WordShift]:
        return attention_shift(self.a, self.b)

    def images(self) -> tuple[Image.Image, Image.Image]:
        return Image.fromarray(self.a.image), Image.fromarray(self.b.image)

    @cached_property
    def gain(self) -> int:
        return difference_gain(self.a.image, self.b.image)

    def difference(self) -> Image.Image:
        return difference_image(self.a.image, self.b.image, self.gain)

    def shown(self) -> tuple[tuple[Image.Image, Image.Image], Image.Image]:
        """A and B, and their difference, at the panel size (a tiny model's 64 px would be blurred by a browser)."""
        a, b = self.views
        return (a.image, b.image), self.difference().resize(a.size, Image.Resampling.NEAREST)

    def word_choices(self) -> list[tuple[str, int]]:
        """A's real words, as (label, index) for a dropdown."""
        view = self.views[0]
        return [(view.word_labels[i], i) for i, word in enumerate(view.words) if not word.special]

    def x0_at(self, step: int) -> tuple[Image.Image, Image.Image]:
        """x̂₀ of A at `step` (0-based) and of B at the same point of its run."""
        a, b = self.views
        return a.x0(step), b.x0(paired_step(step, self.a.steps, self.b.steps))

    def attention_at(self, step: int, word: int) -> tuple[Image.Image, Image.Image | None]:
        """A's word `word` at `step` and the word in its place in B (None if B has none), on one colour scale."""
        a, b = self.views
        step_b = paired_step(step, self.a.steps, self.b.steps)
        map_a = a.word_maps(step, HeatmapSettings())[word]
        j = self.words.get(word)
        map_b = b.word_maps(step_b, HeatmapSettings())[j] if j is not None else None
        high = max(float(map_a.max()), float(map_b.max()) if map_b is not None else 0.0)
        return overlay(a, map_a, high), overlay(b, map_b, high) if map_b is not None else None

    def change_maps(self, size: tuple[int, int] = (128, 128)) -> list[tuple[Image.Image, str]]:
        """Each word's attention change (B − A, averaged over steps) on one shared scale, captioned with its shift."""
        kept = [s for s in self.shifts if s.change is not None]
        scale = max((float(np.abs(s.change).max()) for s in kept), default=0.0)
        return [(change_image(s.change, scale, size), f"{s.word} · {s.shift:.4f}") for s in kept]

    def summary(self) -> dict:
        """The comparison as JSON-able numbers: the two recipes, the image and x̂₀ differences, the word shifts."""
        split = split_step(self.differences)
        return {
            "a": {"label": self.label_a, **self.a.recipe.as_dict()},
            "b": {"label": self.label_b, **self.b.recipe.as_dict()},
            "pixel_difference": pixel_difference(self.a.image, self.b.image),
            "difference_gain": self.gain,
            "x0_difference": [round(float(d), 6) for d in self.differences],
            "x_t_difference": [round(float(d), 6) for d in self.trajectory],
            "split_step": split,
            "words": [
                {"word": s.word, "word_b": s.word_b, "attention_a": s.mass_a, "attention_b": s.mass_b, "shift": s.shift}
                for s in self.shifts
            ],
        }

    def describe(self) -> str:
        """Markdown: how much the images differ and when the trajectories parted."""
        pixels = pixel_difference(self.a.image, self.b.image)
        split = split_step(self.differences)
        text = (
            f"**{self.label_a}** vs **{self.label_b}**: the images differ by {pixels['mean']:.1f} of 255 on average; "
            f"{pixels['changed_share']:.0%} of the pixels changed by more than {CHANGED_LEVELS} levels. "
        )
        if split is None:
            return text + "x̂₀ is the same at every step: the two runs never part."
        return text + (
            f"x̂₀ differs by {self.differences[0]:.3f} at step 1, {self.differences.max():.3f} at most and "
            f"{self.differences[-1]:.3f} at the end (latent units): the predictions part at **step {split} of "
            f"{self.a.steps}** (half their largest difference). The noisy latents x_t, the same at step 1 when the "
            f"seed is, end {self.trajectory[-1]:.3f} apart."
        )
