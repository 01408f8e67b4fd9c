"""The X/Y/Z plot tab: the Text-to-Image settings, up to three axes of values, and a labelled grid of one image per
cell (image-to-image when a start image is given). Thin: sdplay/xyz/plot.py plans, runs and draws the plot.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import PREVIEW_EVERY, Cancelled
from sdplay.runtime.models import LoadedModel, ModelSwitch
from sdplay.runtime.request import GenerationRequest, PlotLimits, Task
from sdplay.ui.common import (
    Controls,
    controls,
    from_web_page,
    image_upload,
    user_errors,
    warnings_before,
    wire_stop,
    without_paths,
)
from sdplay.ui.tabs import Page, Tab
from sdplay.xyz.plot import (
    AXIS_TYPES,
    NOTHING,
    Axis,
    Cell,
    CellDone,
    CellStep,
    axis,
    grid_image,
    plan,
    recipe,
    run_cells,
    with_recipe,
)

# A plot is not one GPU job but one per cell: it waits in a queue of its own and hands each cell to the executor,
# whose job thread runs jobs in the order they come, so that other users' single images run between two cells
# instead of after the whole grid. The model itself still runs one job at a time.
PLOT = {"concurrency_id": "xyz", "concurrency_limit": 4}
# The grid shown while a plot runs: small, and at most every 2 s. Encoding it is paid before the next cell starts,
# and a PNG of 64 cells of 512² takes seconds (0.5 s made small to 1024 px, on a 2-core CPU).
PARTIAL_GRID = 768
PARTIAL_GRID_EVERY = 2.0
AXIS_ROWS = (("x", "Steps"), ("y", NOTHING), ("z", NOTHING))  # each axis's API name prefix and its first type

Axes = tuple[Axis, Axis, Axis]


def allowed_models(switch: ModelSwitch, user: str | None) -> list[str]:
    """The models the Model axis may load for `user`: those the model box may switch to, by the same rules."""
    if not switch.open or (switch.admin is not None and user != switch.admin):
        return []
    return list(switch.models)


def _captions(cells: list[Cell], axes: Axes) -> list[str]:
    return [
        " · ".join(a.label(a.values[i]) for a, i in zip(axes, cell.position, strict=True) if a.type.name != NOTHING)
        for cell in cells
    ]


@dataclass
class PlotShown:
    """What the tab shows of one plot as its cells come: the finished cells, their parameters, and when the
    progress bar and the grid last changed. Each method returns the tab's (grid, cells, JSON), or None: nothing new."""

    base: GenerationRequest
    axes: Axes
    cells: list[Cell]
    model: str  # the model loaded when the plot started (its recipe names it)
    watched: bool  # by sdplay's page: previews and partial grids; an API caller gets the final result only
    images: dict[int, Image.Image] = field(default_factory=dict)
    done: list[dict] = field(default_factory=list)
    shown: float = -math.inf
    grid_shown: float = -math.inf
    captions: list[str] = field(init=False)  # each cell's axis values, as the gallery labels it

    def __post_init__(self) -> None:
        self.captions = _captions(self.cells, self.axes)

    def outputs(self, final: bool) -> tuple:
        """The grid (small while the plot runs; with its recipe at the end), the cells, and their parameters."""
        grid = grid_image(self.cells, self.images, self.axes)
        if not final:
            grid.thumbnail((PARTIAL_GRID, PARTIAL_GRID))
            return grid, gr.skip(), self.done
        grid = with_recipe(grid, recipe(self.base, self.axes, self.cells, self.model))
        return grid, [(self.images[i], self.captions[i]) for i in sorted(self.images)], self.done

    def step(self, item: CellStep, progress: gr.Progress) -> tuple | None:
        """A step of a cell: the progress bar, and its preview in the gallery when one was due."""
        step = item.update
        if step.previews or time.monotonic() - self.shown >= PREVIEW_EVERY:
            fraction = (item.index + step.step / max(1, step.total)) / item.total
            progress(fraction, desc=item.describe())
            self.shown = time.monotonic()
        if not step.previews:  # none was due at this step
            return None
        if not self.watched:  # no preview for an API caller, but a yield: Gradio cancels a job only there
            return gr.skip(), gr.skip(), gr.skip()
        preview = f"Cell {item.index + 1} of {item.total}: {self.captions[item.index]}"
        return gr.skip(), [(step.previews[0], preview)], gr.skip()

    def finished(self, item: CellDone) -> tuple | None:
        """A finished cell: kept, and the grid so far when the last one shown is old enough."""
        self.images[item.index] = item.result.images[0]
        self.done.append({**self.cells[item.index].parameters(), "infotext": item.result.infotexts[0]})
        if self.watched and item.index + 1 < item.total and time.monotonic() - self.grid_shown >= PARTIAL_GRID_EVERY:
            self.grid_shown = time.monotonic()
            return self.outputs(final=False)
        return None

    def stopped(self, stopped: Cancelled) -> None:
        """A Stop: the page keeps the finished cells; an API caller gets an error, not what looks like a result."""
        where = f"Stopped at cell {len(self.images) + 1} of {len(self.cells)}"
        if not self.watched:
            raise gr.Error(f"{where}.") from None
        kept = f"{len(self.images)} finished cell{'' if len(self.images) == 1 else 's'}"
        gr.Info(f"{where} ({stopped}). The grid keeps the {kept}.")


def model_loader(page: Page, first: LoadedModel, user: str | None) -> Callable[[str], None]:
    """How the Model axis loads a cell's model for `user`: by the model box's rules, and `first` again at the end."""

    def load(name: str) -> None:
        if name == first.name:  # the plot's first model, loaded again at its end
            page.manager.load(first.source, config=first.config, by=first.loaded_by)
            return
        source, allow_local = page.switch.source(name, user)
        page.manager.load(source, allow_local=allow_local, by=user or "an X/Y/Z plot")

    return load


def plot(
    page: Page,
    request: gr.Request | None,
    progress: gr.Progress,
    *,
    x_type: str, x_values: str, y_type: str, y_values: str, z_type: str, z_values: str,
    **settings,
) -> Iterator[tuple]:  # fmt: skip
    """The /xyz handler: plan the cells of `settings` (a `GenerationRequest`'s fields) along the three axes, run
    them one job each, and yield the tab's (grid, cells, JSON) as they come; see `build`'s `xyz` for the API."""
    watched = request is None or from_web_page(request)
    owner = request.session_hash if request else None
    user = request.username if request else None
    with user_errors():
        base = GenerationRequest(task=Task.IMG2IMG if settings.get("image") else Task.TXT2IMG, **settings)
        axes = plot_axes(((x_type, x_values), (y_type, y_values), (z_type, z_values)), page.plot_limits)
        model = page.manager.model
        models = allowed_models(page.switch, user)
        cells = plan(base, axes, model.name, models, page.limits, page.plot_limits, model.native_size)
        for warning in warnings_before(model, base, page.limits):
            gr.Warning(warning)
        shown = PlotShown(base, axes, cells, model.name, watched)
        progress(0, desc=f"Cell 1 of {len(cells)}")
        load = model_loader(page, model, user) if models else None
        try:
            for item in run_cells(page.manager, cells, page.limits, owner, load):
                update = shown.step(item, progress) if isinstance(item, CellStep) else shown.finished(item)
                if update is not None:
                    yield update
        except Cancelled as stopped:
            shown.stopped(stopped)
        except UserError as error:  # the model was switched under the plot: keep what it made on the page
            if not watched or not shown.images:
                raise
            gr.Warning(without_paths(str(error)))
        yield shown.outputs(final=True)


def plot_axes(typed: tuple[tuple[str, str], ...], limits: PlotLimits) -> Axes:
    """The X, Y and Z axes from their (type, values text) pairs."""
    x, y, z = (axis(kind, values, limits) for kind, values in typed)
    return x, y, z


def axis_rows() -> dict[str, gr.components.Component]:
    """The X, Y and Z rows (a type and its values), as the /xyz parameters they feed: x_type, x_values, y_type ..."""
    rows: dict[str, gr.components.Component] = {}
    for name, default in AXIS_ROWS:
        label = name.upper()
        with gr.Row():
            rows[f"{name}_type"] = gr.Dropdown(list(AXIS_TYPES), value=default, label=f"{label} type", scale=1)
            rows[f"{name}_values"] = gr.Textbox(
                "", label=f"{label} values", placeholder='1-5, 1-5 (+2), 1-5 [3], a, "b, c"', scale=3
            )
    return rows


def settings_column(page: Page) -> tuple[Controls, dict[str, gr.components.Component]]:
    """The left column: the Text-to-Image controls (which a model load updates) and the /xyz parameters they, the
    axes and the optional start image feed, in the API's order."""
    c = controls(page.manager, page.limits, batch=False, fast=True)  # one image per cell
    with gr.Accordion("Start image (optional: cells are then image-to-image)", open=False):
        image = image_upload("Start image", 240)
        strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength")
    rows = axis_rows()
    gr.Markdown(
        f"Ranges as in A1111: `1-5`, `1-5 (+2)`, `1-5 [3]` (3 values), `0.5-1.5 (+0.25)`; names separated by "
        f'commas, quoted when they hold one (`"a, b"`). Prompt S/R replaces its first value, which must be in '
        f"the prompt. At most {page.plot_limits.max_cells} cells and {page.plot_limits.max_megapixels:g} megapixels."
    )
    inputs = c.named() | c.named("width", "height", "batch_size", "schedule") | rows
    return c, inputs | {"image": image, "strength": strength}


def build(page: Page) -> None:
    with gr.Row():
        with gr.Column():
            c, inputs = settings_column(page)
        with gr.Column():
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_classes="generate")
                stop = gr.Button("Stop", variant="stop")
            grid = gr.Image(
                label="Grid", format="png", type="pil", interactive=False, height=520, elem_classes="xyz-grid"
            )
            gallery = gr.Gallery(label="Cells", format="png", columns=4, height=300, interactive=False)
            cells_json = gr.JSON(label="Cell parameters")

    # `request` and `progress` before the `*`: Gradio fills in only positional ones (a keyword-only `request` stays
    # None). `image` keeps its API default of None by being named here (its component starts empty).
    def xyz(request: gr.Request = None, progress=gr.Progress(), *, image: str | None = None, **settings) -> Iterator:
        """An X/Y/Z plot: the /txt2img parameters (or, with `image`, /img2img's) plus up to three axes (a type such as
        Seed, Steps, CFG Scale, Sampler, Schedule type, Prompt S/R, Denoising strength or Model, and values in A1111's
        syntax). Returns the labelled grid PNG (its `sdplay_xyz` chunk holds the recipe), the cells' PNGs (each with
        its infotext) and a JSON list of every cell's parameters."""
        yield from plot(page, request, progress, image=image, **settings)

    outputs = [grid, gallery, cells_json]
    event = generate.click(
        xyz, inputs_kwargs=inputs, outputs=outputs, api_name="xyz", show_progress_on=cells_json, **PLOT
    )
    wire_stop(page.manager, stop, event)
    page.follow_model(c)
    page.one_job_per_session.append(PLOT["concurrency_id"])  # one plot per session (its cells join the GPU's)


TAB = Tab("xyz", "X/Y/Z plot", build)
