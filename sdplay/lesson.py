"""The guided lesson: ten stages through one recorded run, each a text, one or two panels and a "try this".

The texts and presets live in assets/lesson/lesson.json (a teacher edits or translates them there); this module
holds the stages as data (which panels each draws, which comparison its "try this" sets up) and picks the preset.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

from PIL import Image

from sdplay.compare import FIELDS
from sdplay.explain.capture import ExplainRun
from sdplay.explain.filmstrip import Filmstrip
from sdplay.explain.lesson_panels import (
    attention_grid,
    causal_mask,
    compression,
    side_by_side,
    token_chips,
    unet_levels,
)
from sdplay.explain.render import ExplainView, HeatmapSettings, content_word
from sdplay.requests import GenerationRequest, Limits, Task, validated
from sdplay.samplers import AUTOMATIC

DATA = Path(__file__).resolve().parent.parent / "assets" / "lesson" / "lesson.json"
EXPLAIN = "explain"  # a "try this" field that opens Explain with a prompt instead of setting up Compare
WORD = re.compile(r"[a-z]+")


@cache
def lesson_data(path: Path = DATA) -> dict:
    """The lesson's data file, read once: {"presets": [...], "texts": {language: {key: text}}}."""
    return json.loads(path.read_text(encoding="utf-8"))


def translations(path: Path = DATA) -> dict[str, dict[str, str]]:
    """Every language's texts, for `gr.I18n(**translations())`."""
    return lesson_data(path)["texts"]


def language(accept_language: str | None, path: Path = DATA) -> str:
    """The lesson's language that best fits a browser's Accept-Language header ("fr-CH,fr;q=0.9,en;q=0.8"), else
    English: for the few texts that Gradio's i18n does not translate (error messages)."""
    offered = translations(path)
    wishes = []
    for index, part in enumerate((accept_language or "").split(",")):
        tag, _, weight = part.strip().partition(";q=")
        try:
            wishes.append((-float(weight or 1), index, tag.strip().lower()))
        except ValueError:
            continue
    for _, _, tag in sorted(wishes):
        for candidate in (tag, tag.split("-")[0]):
            if candidate in offered:
                return candidate
    return "en"


def text(key: str, language_code: str = "en", path: Path = DATA) -> str:
    """One of the lesson's texts in a language (English where that language lacks it)."""
    texts = translations(path)
    return texts.get(language_code, {}).get(key) or texts["en"][key]


# Presets ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """The lesson's run for a kind of model: fixed prompt, seed and CFG; what it leaves out (None) is the model's
    recommended setting. `tries` holds each stage's comparison for this prompt: stage id -> (field, value)."""

    name: str
    prompt: str
    closed_vocabulary: bool  # for a model that knows only a few words (the bundled one): all of them must be known
    negative_prompt: str = ""
    sampler: str | None = None
    schedule: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 1
    size: int | None = None
    tries: dict[str, tuple[str, str]] = field(default_factory=dict)

    def request(self, settings, native_size: int, limits: Limits = Limits()) -> GenerationRequest:
        """The validated text-to-image request, filled in with the model's recommended `settings`."""
        size = self.size or settings.size or native_size
        sampler = self.sampler or settings.sampler
        schedule = self.schedule or (settings.schedule if sampler == settings.sampler else AUTOMATIC)
        return validated(
            GenerationRequest(
                task=Task.TXT2IMG, prompt=self.prompt, negative_prompt=self.negative_prompt, sampler=sampler,
                schedule=schedule, steps=self.steps or settings.steps,
                guidance_scale=settings.guidance_scale if self.guidance_scale is None else self.guidance_scale,
                seed=self.seed, width=size, height=size,
            ),
            limits,
        )  # fmt: skip


def presets(path: Path = DATA) -> list[Preset]:
    presets = []
    for entry in lesson_data(path)["presets"]:
        tries = {stage: (t["field"], t["value"]) for stage, t in entry.get("try", {}).items()}
        known = {name for name in Preset.__dataclass_fields__} - {"tries"}
        presets.append(Preset(**{k: v for k, v in entry.items() if k in known}, tries=tries))
    return presets


def preset_for(vocabulary: tuple[str, ...], path: Path = DATA) -> Preset:
    """A model that knows only a few words gets the first closed-vocabulary preset whose words it all knows; any
    other model the first open one (Stable Diffusion's)."""
    known = {word.lower() for word in vocabulary}
    for preset in presets(path):
        if vocabulary and preset.closed_vocabulary and set(WORD.findall(preset.prompt.lower())) <= known:
            return preset
    return next(preset for preset in presets(path) if not preset.closed_vocabulary)


# The lesson's run, and the moment shown ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """Where in the run the panels look: a 0-based step and a word (an index into the view's words)."""

    step: int
    word: int


@dataclass
class LessonView:
    """The lesson's run ready to draw, and what the loaded model adds to it: its tokens' ids (None when the model
    that made the run is not loaded, as for a replayed file of another model)."""

    view: ExplainView
    token_ids: list[int] | None = None
    preset: Preset | None = None  # the preset that made the run: its "try this" values fit its prompt

    @property
    def run(self) -> ExplainRun:
        return self.view.run

    @property
    def model(self) -> str:
        return str(self.run.recipe.get("model"))

    @property
    def model_loaded(self) -> bool:
        return self.token_ids is not None

    @cached_property
    def strip(self) -> Filmstrip:
        return Filmstrip(self.view)

    @cached_property
    def start(self) -> Moment:
        """The lesson starts at the last step, on the prompt's first content word."""
        return Moment(self.run.steps - 1, content_word(self.view.words))

    def settings(self, at: Moment) -> HeatmapSettings:
        return HeatmapSettings(word=at.word)


def lesson_view(
    view: ExplainView, loaded_model: str | None, tokenizer=None, preset: Preset | None = None
) -> LessonView:
    """A run (recorded or replayed) for the lesson; the ids come from `tokenizer` only if `loaded_model` made it."""
    run = view.run
    ids = None
    if tokenizer is not None and loaded_model == run.recipe.get("model"):
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(run.tokens)]
    fits = preset if preset is not None and run.recipe.get("prompt") == preset.prompt else None
    return LessonView(view, ids, fits)


# Stages ----------------------------------------------------------------------------------------------------------

Draw = Callable[[LessonView, Moment], Image.Image]


@dataclass(frozen=True)
class Panel:
    """A panel of a stage: its texts are `panel_<name>` (label) and `panel_<name>_caption`. A panel that
    `needs_model` is drawn only when the run's model is loaded; otherwise `fallback`, from what the file holds."""

    name: str
    draw: Draw
    wide: bool = False  # a picture wider than tall (a chart, a strip): it gets a row of its own
    needs_model: bool = False
    fallback: "Panel | None" = None

    def shown(self, lesson: LessonView) -> "Panel":
        """This panel, or its fallback when it needs the run's model and that is not loaded."""
        if self.needs_model and not lesson.model_loaded and self.fallback is not None:
            return self.fallback
        return self


@dataclass(frozen=True)
class Try:
    """A stage's "try this" without a preset's value: the Compare field (or EXPLAIN) and B's value from the run."""

    field: str
    value: Callable[[LessonView], str]


@dataclass(frozen=True)
class Stage:
    """One stage: its texts are `stage_<id>_title`, `_text` and `_try`; one or two panels; its "try this"."""

    id: str
    panels: tuple[Panel, ...]
    attempt: Try
    step: float | None = None  # where entering the stage puts the step slider: 0 first, 1 last; None: as it is

    def step_at(self, steps: int) -> int | None:
        """The 1-based step the stage starts at in a run of `steps`, or None to keep the slider's."""
        return None if self.step is None else 1 + round(self.step * (steps - 1))

    def needs_model(self, lesson: LessonView) -> bool:
        """Whether the stage would compute from the run's model, which is not loaded (it then says so)."""
        return not lesson.model_loaded and any(panel.needs_model for panel in self.panels)


def chosen_word(lesson: LessonView) -> str:
    return lesson.view.words[lesson.start.word].text


def recipe(lesson: LessonView, key: str):
    return lesson.run.recipe.get(key)


# The panels, each drawn from the recorded run. Stages 2, 3, 4 (the VAE), 5 and 6 get richer panels from the
# Inside tab's modules as those land: a line each here.
TOKENS = Panel("tokens", lambda lesson, at: token_chips(lesson.view, None, at.word), wide=True)
TOKEN_IDS = Panel(
    "token_ids", lambda lesson, at: token_chips(lesson.view, lesson.token_ids, at.word), wide=True, needs_model=True,
    fallback=TOKENS,
)  # fmt: skip
CAUSAL = Panel("causal", lambda lesson, at: causal_mask(lesson.view, at.word), wide=True)
NOISE = Panel("noise", lambda lesson, at: lesson.view.preview("x_t", at.step))
COMPRESSION = Panel("compression", lambda lesson, at: compression(lesson.view), wide=True)
EPS = Panel("eps", lambda lesson, at: lesson.view.noise(at.step)[1])
LEVELS = Panel("levels", lambda lesson, at: unet_levels(lesson.view, at.step, lesson.settings(at)), wide=True)
POSITIONS = Panel("positions", lambda lesson, at: attention_grid(lesson.view, at.step, lesson.settings(at)))
HEATMAP = Panel("heatmap", lambda lesson, at: lesson.view.heatmap(at.step, lesson.settings(at))[0])
MASS = Panel("mass", lambda lesson, at: lesson.view.timeline_chart("mass", at.word), wide=True)
EPS_PAIR = Panel("eps_pair", lambda lesson, at: side_by_side(list(lesson.view.noise(at.step)[:2])), wide=True)
GUIDANCE = Panel("guidance", lambda lesson, at: lesson.view.noise(at.step)[2])
FILMSTRIP = Panel("filmstrip", lambda lesson, at: lesson.strip.draw(at.step), wide=True)
X0 = Panel("x0", lambda lesson, at: lesson.view.x0(at.step))
LATENT = Panel("latent", lambda lesson, at: lesson.view.preview("x0", lesson.run.steps - 1))
FINAL = Panel("final", lambda lesson, at: lesson.view.image)


def _guidance_off(lesson: LessonView) -> str:
    return "1" if float(recipe(lesson, "guidance_scale")) > 1 else "7"


def _next_seed(lesson: LessonView) -> str:
    return str(int(recipe(lesson, "seed")) + 1)


# Entering a stage puts the step where its panels tell the story: the noise at the first step, the UNet and the
# guidance in the middle of the run, where the words look at the last.
STAGES: tuple[Stage, ...] = (
    Stage("tokens", (TOKENS,), Try(EXPLAIN, lambda lesson: f"{recipe(lesson, 'prompt')}, watercolour")),
    Stage("token_embeddings", (TOKEN_IDS,), Try("Negative prompt", chosen_word)),
    Stage("contextual", (CAUSAL,), Try("Negative prompt", chosen_word)),
    Stage("latent", (NOISE, COMPRESSION), Try("Seed", _next_seed), step=0),
    Stage("unet", (EPS, LEVELS), Try("Steps", lambda lesson: str(max(1, int(recipe(lesson, "steps")) // 4))), 0.5),
    Stage("self_attention", (POSITIONS, HEATMAP), Try("Seed", _next_seed), step=1),
    Stage("cross_attention", (HEATMAP, MASS), Try("Negative prompt", chosen_word), step=1),
    Stage("guidance", (EPS_PAIR, GUIDANCE), Try("CFG scale", _guidance_off), step=0.5),
    Stage("trajectory", (FILMSTRIP, X0), Try("Sampler", lambda lesson: "Euler a"), step=0),
    Stage("decode", (LATENT, FINAL), Try(EXPLAIN, lambda lesson: str(recipe(lesson, "prompt"))), step=1),
)


def stage_index(stage_id: str) -> int:
    return next(i for i, stage in enumerate(STAGES) if stage.id == stage_id)


@dataclass(frozen=True)
class Shown:
    """A stage drawn for one moment: each panel shown (a fallback where the model is missing) and its image."""

    panels: tuple[Panel, ...]
    images: tuple[Image.Image, ...]
    needs_model: bool  # the stage would use the run's model, which is not loaded: say so


def draw_stage(stage: Stage, lesson: LessonView, at: Moment) -> Shown:
    panels = tuple(panel.shown(lesson) for panel in stage.panels)
    return Shown(panels, tuple(panel.draw(lesson, at) for panel in panels), stage.needs_model(lesson))


# Try this --------------------------------------------------------------------------------------------------------

SETTINGS = ("prompt", "negative_prompt", "sampler", "schedule", "steps", "guidance_scale", "seed", "width", "height")


@dataclass(frozen=True)
class Setup:
    """What a "try this" button fills in: the lesson run's settings (for Compare's A, or Explain), and either B's
    one change in Compare (`field`, a label of compare.FIELDS, and `value`) or, for Explain, its prompt."""

    tab: str  # "compare" or "explain"
    settings: dict[str, object]
    field: str | None = None
    value: str = ""

    def describe(self) -> str:
        """The change in a few words, for the button: 'CFG scale: 1', 'Word: red -> blue'."""
        if self.tab == EXPLAIN:
            return f"“{self.settings['prompt']}”"
        return f"{self.field}: {self.value}"


def try_setup(stage: Stage, lesson: LessonView) -> Setup:
    """The comparison a stage suggests for the lesson's run: the preset's own when the run is the preset's, else
    one that any run allows (another seed, CFG, sampler; the chosen word as a negative prompt)."""
    field, value = (
        lesson.preset.tries[stage.id]
        if lesson.preset is not None and stage.id in lesson.preset.tries
        else (stage.attempt.field, stage.attempt.value(lesson))
    )
    settings = {key: lesson.run.recipe.get(key) for key in SETTINGS}
    settings["schedule"] = settings["schedule"] or AUTOMATIC
    if field == EXPLAIN:
        return Setup(EXPLAIN, {**settings, "prompt": value})
    if field not in FIELDS:
        raise ValueError(f"stage {stage.id}: {field!r} is not a Compare field")
    return Setup("compare", settings, field, value)


def setup_request(setup: Setup, limits: Limits = Limits()) -> GenerationRequest:
    """A's request (or Explain's), validated: what pressing Compare or Explain would then run."""
    return validated(GenerationRequest(task=Task.TXT2IMG, **setup.settings), limits)
