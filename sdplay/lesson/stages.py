"""The guided lesson: ten stages through one recorded run, each a text, one or two panels and a "try this".

The texts and presets live in assets/lesson/lesson.json (a teacher edits or translates them there); this module
holds the stages as data (which panels each draws, which comparison its "try this" sets up) and picks the preset.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from sdplay.compare.comparison import FIELDS
from sdplay.explain.capture import ExplainRun
from sdplay.explain.decoding import decode_x0_if_cheap
from sdplay.explain.filmstrip import Filmstrip
from sdplay.explain.render import ExplainView, HeatmapSettings, content_word
from sdplay.inside.attention import PointAttention, PointRequest, attend_at, self_attention_image
from sdplay.inside.text import (
    CausalRequest,
    CausalTest,
    Neighbours,
    NeighboursRequest,
    TextEmbeddings,
    causal_chart,
    causal_test,
    cosine_matrix,
    first_chunk,
    movement_chart,
    nearest_tokens,
    similarity_image,
    vector_strips,
)
from sdplay.inside.unet import UNetInside, UNetRequest, diagram, first_convolution, look_inside
from sdplay.inside.unet_step import step_input
from sdplay.lesson.pictures import (
    attention_grid,
    causal_mask,
    compression,
    neighbour_rows,
    side_by_side,
    token_chips,
    unet_levels,
)
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, Task, validated
from sdplay.runtime.samplers import AUTOMATIC

DATA = Path(__file__).resolve().parents[2] / "assets" / "lesson" / "lesson.json"
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
    """The lesson's run ready to draw, and what its model adds when it is the one loaded: the answers of the
    questions the lesson asks it (`MODEL_QUESTIONS`: the nearest vocabulary tokens, the causal test)."""

    view: ExplainView
    model_loaded: bool = False  # the model that made the run is the one loaded
    token_ids: list[int] | None = None  # the file's, else the loaded tokenizer's; None: neither has them
    preset: Preset | None = None  # the preset that made the run: its "try this" values fit its prompt
    neighbours: list[Neighbours] | None = None
    causal: CausalTest | None = None
    inside: UNetInside | None = None  # one UNet call at the UNet stage's step, with hooks
    attention: PointAttention | None = None  # self-attention at the chosen word's place, at the last step

    @property
    def run(self) -> ExplainRun:
        return self.view.run

    @property
    def model(self) -> str:
        return self.run.recipe.model

    @cached_property
    def embeddings(self) -> TextEmbeddings | None:
        """The prompt's static and contextual vectors, from the file (None in files saved before they were)."""
        return TextEmbeddings.of_run(self.run)

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
    """A run (recorded or replayed) for the lesson. Its ids are the file's, or `tokenizer`'s if `loaded_model`
    made the run."""
    run = view.run
    loaded = loaded_model == run.recipe.model
    ids = [int(i) for i in run.token_ids] if run.token_ids is not None else None
    if ids is None and loaded and tokenizer is not None:
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(run.tokens)]
    fits = preset if preset is not None and run.recipe.prompt == preset.prompt else None
    return LessonView(view, loaded, ids, fits)


@dataclass(frozen=True)
class Question:
    """A job that asks the run's model something for a stage (sdplay/inside/text.py's work functions): run
    through the executor when the run is recorded or replayed with its model loaded; the answer goes to `answer`."""

    work: Callable
    request: Callable[[LessonView], object]
    answer: str  # the LessonView field that keeps it


def _chunk(lesson: LessonView) -> tuple[str, ...]:
    return tuple(first_chunk(lesson.run.tokens))


def _unet_step(lesson: LessonView) -> UNetRequest:
    """Inside the UNet at the step where the UNet stage starts (the middle of the run)."""
    stage = next(stage for stage in STAGES if stage.id == "unet")
    return UNetRequest(step_input(lesson.run, stage.step_at(lesson.run.steps) - 1))


def _self_attention(lesson: LessonView) -> PointRequest:
    """Self-attention at the last step, at the place where the lesson's word looks most, in the finest block."""
    step = lesson.run.steps - 1
    peak = lesson.view.word_maps(step, lesson.settings(lesson.start))[lesson.start.word]
    row, column = np.unravel_index(int(np.argmax(peak)), peak.shape)
    point = ((column + 0.5) / peak.shape[1], (row + 0.5) / peak.shape[0])
    finest = max(lesson.view.blocks, key=lambda block: lesson.run.attention[block].shape[-1])
    return PointRequest(step_input(lesson.run, step), finest, point)


MODEL_QUESTIONS = (
    Question(nearest_tokens, lambda lesson: NeighboursRequest(lesson.model, _chunk(lesson)), "neighbours"),
    Question(causal_test, lambda lesson: CausalRequest(lesson.model, _chunk(lesson)), "causal"),
    Question(look_inside, _unet_step, "inside"),
    Question(attend_at, _self_attention, "attention"),
)


def ask(manager: ModelManager, lesson: LessonView, limits: Limits = Limits(), owner: str | None = None) -> LessonView:
    """With the run's model loaded, ask it the lesson's questions (each a job on the executor) and keep the answers
    in `lesson`; a question it cannot answer leaves its panels to their fallbacks. x̂₀ is decoded too where that is
    cheap (the bundled model's linear preview shows its red as brown)."""
    if not lesson.model_loaded:
        return lesson
    for question in MODEL_QUESTIONS:
        try:
            *_, answer = manager.executor.run(JobSpec(question.work, question.request(lesson), limits, owner))
        except UserError:
            continue
        setattr(lesson, question.answer, answer)
    decode_x0_if_cheap(manager, lesson.view, limits, owner)
    return lesson


# Stages ----------------------------------------------------------------------------------------------------------

Draw = Callable[[LessonView, Moment], Image.Image]
# What a panel may need beyond the recorded maps and latents, and the text that says it is missing.
NEEDS: dict[str, tuple[Callable[[LessonView], bool], str]] = {
    "ids": (lambda lesson: lesson.token_ids is not None, "lesson_needs_model"),
    "embeddings": (lambda lesson: lesson.embeddings is not None, "lesson_needs_embeddings"),
    "neighbours": (lambda lesson: lesson.neighbours is not None, "lesson_needs_model"),
    "causal": (lambda lesson: lesson.causal is not None, "lesson_needs_model"),
    "inside": (lambda lesson: lesson.inside is not None, "lesson_needs_model"),
    "attention": (lambda lesson: lesson.attention is not None, "lesson_needs_model"),
}


@dataclass(frozen=True)
class Panel:
    """A panel of a stage: its texts are `panel_<name>` (label) and `panel_<name>_caption`. A panel that `needs`
    something the lesson lacks (the run's model, or embeddings an older file does not hold) shows its `fallback`
    instead, drawn from what the file holds."""

    name: str
    draw: Draw
    wide: bool = False  # a picture wider than tall (a chart, a strip): it gets a row of its own
    needs: str | None = None  # a key of NEEDS
    fallback: "Panel | None" = None

    def missing(self, lesson: LessonView) -> str | None:
        """The text key that says what this panel lacks, or None when it can be drawn."""
        if self.needs is None:
            return None
        available, text = NEEDS[self.needs]
        return None if available(lesson) else text

    def shown(self, lesson: LessonView) -> "Panel":
        """This panel, or (as many times as needed) its fallback."""
        if self.missing(lesson) is not None and self.fallback is not None:
            return self.fallback.shown(lesson)
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

    def missing(self, lesson: LessonView) -> str | None:
        """The text key that says what the stage lacks to show all it can (the run's model first), or None."""
        lacking = {panel.missing(lesson) for panel in self.panels} - {None}
        return "lesson_needs_model" if "lesson_needs_model" in lacking else next(iter(lacking), None)


def chosen_word(lesson: LessonView) -> str:
    return lesson.view.words[lesson.start.word].text


def static_similarity(lesson: LessonView) -> Image.Image:
    embeddings = lesson.embeddings
    return similarity_image(cosine_matrix(embeddings.static), embeddings.labels, "")


# The panels. Most are drawn from the recorded run alone; those that need more say so (`needs`) and name what to
# show without it. A richer view from the Inside tab's modules plugs in as a line here.
TOKENS = Panel("tokens", lambda lesson, at: token_chips(lesson.view, None, at.word), wide=True)
TOKEN_IDS = Panel(
    "token_ids", lambda lesson, at: token_chips(lesson.view, lesson.token_ids, at.word), wide=True, needs="ids",
    fallback=TOKENS,
)  # fmt: skip
STATIC = Panel(
    "static", lambda lesson, at: vector_strips(lesson.embeddings.static, lesson.embeddings.labels, ""), wide=True,
    needs="embeddings", fallback=TOKEN_IDS,
)  # fmt: skip
SIMILARITY = Panel("similarity", lambda lesson, at: static_similarity(lesson), wide=True, needs="embeddings",
                   fallback=TOKENS)  # fmt: skip
NEIGHBOURS = Panel(
    "neighbours", lambda lesson, at: neighbour_rows(lesson.neighbours, lesson.run.tokens), wide=True,
    needs="neighbours", fallback=SIMILARITY,
)  # fmt: skip
MOVEMENT = Panel(
    "movement", lambda lesson, at: movement_chart(lesson.embeddings), wide=True, needs="embeddings",
    fallback=TOKEN_IDS,
)  # fmt: skip
CAUSAL_TEST = Panel(
    "causal_test", lambda lesson, at: causal_chart(lesson.causal), wide=True, needs="causal", fallback=MOVEMENT
)
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
CONVOLUTION = Panel(
    "convolution", lambda lesson, at: first_convolution(lesson.inside), wide=True, needs="inside", fallback=EPS
)
DIAGRAM = Panel(
    "diagram", lambda lesson, at: diagram(lesson.inside, lesson.model), wide=True, needs="inside", fallback=LEVELS
)
SELF_ATTENTION = Panel(
    "self_attention", lambda lesson, at: self_attention_image(lesson.view.image, lesson.attention), needs="attention",
    fallback=HEATMAP,
)  # fmt: skip


def _guidance_off(lesson: LessonView) -> str:
    return "1" if lesson.run.recipe.guidance_scale > 1 else "7"


def _next_seed(lesson: LessonView) -> str:
    return str(lesson.run.recipe.seed + 1)


def _fewer_steps(lesson: LessonView) -> str:
    return str(max(1, lesson.run.recipe.steps // 4))


# Entering a stage puts the step where its panels tell the story: the noise at the first step, the UNet and the
# guidance in the middle of the run, where the words look at the last.
STAGES: tuple[Stage, ...] = (
    Stage("tokens", (TOKEN_IDS,), Try(EXPLAIN, lambda lesson: f"{lesson.run.recipe.prompt}, watercolour")),
    Stage("token_embeddings", (STATIC, NEIGHBOURS), Try("Negative prompt", chosen_word)),
    Stage("contextual", (CAUSAL, CAUSAL_TEST), Try("Negative prompt", chosen_word)),
    Stage("latent", (NOISE, COMPRESSION), Try("Seed", _next_seed), step=0),
    Stage("unet", (CONVOLUTION, DIAGRAM), Try("Steps", _fewer_steps), step=0.5),
    Stage("self_attention", (POSITIONS, SELF_ATTENTION), Try("Seed", _next_seed), step=1),
    Stage("cross_attention", (HEATMAP, MASS), Try("Negative prompt", chosen_word), step=1),
    Stage("guidance", (EPS_PAIR, GUIDANCE), Try("CFG scale", _guidance_off), step=0.5),
    Stage("trajectory", (FILMSTRIP, X0), Try("Sampler", lambda lesson: "Euler a"), step=0),
    Stage("decode", (LATENT, FINAL), Try(EXPLAIN, lambda lesson: lesson.run.recipe.prompt), step=1),
)


def stage_index(stage_id: str) -> int:
    return next(i for i, stage in enumerate(STAGES) if stage.id == stage_id)


@dataclass(frozen=True)
class Shown:
    """A stage drawn for one moment: each panel shown (a fallback where something is missing) and its image."""

    panels: tuple[Panel, ...]
    images: tuple[Image.Image, ...]
    missing: str | None  # the text key that says what is missing (the run's model, the file's embeddings)


def draw_stage(stage: Stage, lesson: LessonView, at: Moment) -> Shown:
    panels = tuple(panel.shown(lesson) for panel in stage.panels)
    return Shown(panels, tuple(panel.draw(lesson, at) for panel in panels), stage.missing(lesson))


# Try this --------------------------------------------------------------------------------------------------------


def run_request(lesson: LessonView) -> GenerationRequest:
    """The lesson run's settings as a text-to-image request, as its recipe recorded them (not validated: the values
    that "try this" puts in the controls). A file without a schedule ran the sampler's own (Automatic)."""
    return replace(lesson.run.recipe.request(), task=Task.TXT2IMG)


@dataclass(frozen=True)
class Setup:
    """What a "try this" button fills in: the lesson run's settings (for Compare's A, or Explain), and either B's
    one change in Compare (`field`, a label of compare.FIELDS, and `value`) or, for Explain, its prompt."""

    tab: str  # "compare" or "explain"
    request: GenerationRequest
    field: str | None = None
    value: str = ""

    def describe(self) -> str:
        """The change in a few words, for the button: 'CFG scale: 1', 'Word: red -> blue'."""
        if self.tab == EXPLAIN:
            return f"“{self.request.prompt}”"
        return f"{self.field}: {self.value}"


def try_setup(stage: Stage, lesson: LessonView) -> Setup:
    """The comparison a stage suggests for the lesson's run: the preset's own when the run is the preset's, else
    one that any run allows (another seed, CFG, sampler; the chosen word as a negative prompt)."""
    field, value = (
        lesson.preset.tries[stage.id]
        if lesson.preset is not None and stage.id in lesson.preset.tries
        else (stage.attempt.field, stage.attempt.value(lesson))
    )
    request = run_request(lesson)
    if field == EXPLAIN:
        return Setup(EXPLAIN, replace(request, prompt=value))
    if field not in FIELDS:
        raise ValueError(f"stage {stage.id}: {field!r} is not a Compare field")
    return Setup("compare", request, field, value)


def setup_request(setup: Setup, limits: Limits = Limits()) -> GenerationRequest:
    """A's request (or Explain's), validated: what pressing Compare or Explain would then run."""
    return validated(setup.request, limits)
