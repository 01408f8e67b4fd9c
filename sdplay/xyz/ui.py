"""The X/Y/Z plot tab: the Text-to-Image settings, up to three axes of values, and a labelled grid of one image per
cell (image-to-image when a start image is given). Thin: sdplay/xyz/plot.py plans, runs and draws the plot.
"""

import math
import time
from collections.abc import Iterator

import gradio as gr
from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import PREVIEW_EVERY, Cancelled
from sdplay.runtime.models import ModelSwitch
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.ui.common import (
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


def allowed_models(switch: ModelSwitch, user: str | None) -> list[str]:
    """The models the Model axis may load for `user`: those the model box may switch to, by the same rules."""
    if not switch.open or (switch.admin is not None and user != switch.admin):
        return []
    return list(switch.models)


def _captions(cells: list[Cell], axes) -> list[str]:
    return [
        " · ".join(a.label(a.values[i]) for a, i in zip(axes, cell.position, strict=True) if a.type.name != NOTHING)
        for cell in cells
    ]


def build(page: Page) -> None:
    manager, limits, switch, plot_limits = page.manager, page.limits, page.switch, page.plot_limits
    names = list(AXIS_TYPES)
    with gr.Row():
        with gr.Column():
            c = controls(manager, limits, batch=False)  # one image per cell
            with gr.Accordion("Start image (optional: cells are then image-to-image)", open=False):
                image = image_upload("Start image", 240)
                strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength")
            rows = []
            for label, default in (("X", "Steps"), ("Y", NOTHING), ("Z", NOTHING)):
                with gr.Row():
                    kind = gr.Dropdown(names, value=default, label=f"{label} type", scale=1)
                    values = gr.Textbox(
                        "", label=f"{label} values", placeholder='1-5, 1-5 (+2), 1-5 [3], a, "b, c"', scale=3
                    )
                rows.append((kind, values))
            gr.Markdown(
                f"Ranges as in A1111: `1-5`, `1-5 (+2)`, `1-5 [3]` (3 values), `0.5-1.5 (+0.25)`; names separated by "
                f'commas, quoted when they hold one (`"a, b"`). Prompt S/R replaces its first value, which must be in '
                f"the prompt. At most {plot_limits.max_cells} cells and {plot_limits.max_megapixels:g} megapixels."
            )
        with gr.Column():
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_classes="generate")
                stop = gr.Button("Stop", variant="stop")
            grid = gr.Image(
                label="Grid", format="png", type="pil", interactive=False, height=520, elem_classes="xyz-grid"
            )
            gallery = gr.Gallery(label="Cells", format="png", columns=4, height=300, interactive=False)
            cells_json = gr.JSON(label="Cell parameters")

    def xyz(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        batch_size: int = 1,
        schedule: str = AUTOMATIC,
        x_type: str = "Steps",
        x_values: str = "",
        y_type: str = NOTHING,
        y_values: str = "",
        z_type: str = NOTHING,
        z_values: str = "",
        image: str | None = None,
        strength: float = 0.75,
        request: gr.Request = None,
        progress=gr.Progress(),
    ) -> Iterator:
        """An X/Y/Z plot: the /txt2img parameters (or, with `image`, /img2img's) plus up to three axes (a type such as
        Seed, Steps, CFG Scale, Sampler, Schedule type, Prompt S/R, Denoising strength or Model, and values in A1111's
        syntax). Returns the labelled grid PNG (its `sdplay_xyz` chunk holds the recipe), the cells' PNGs (each with
        its infotext) and a JSON list of every cell's parameters."""
        watched = request is None or from_web_page(request)
        owner = request.session_hash if request else None
        user = request.username if request else None
        with user_errors():
            base = GenerationRequest(
                task=Task.IMG2IMG if image else Task.TXT2IMG, prompt=prompt, negative_prompt=negative_prompt,
                sampler=sampler, schedule=schedule, steps=steps, guidance_scale=guidance_scale, seed=seed, width=width,
                height=height, batch_size=batch_size, image=image, strength=strength,
            )  # fmt: skip
            axes = (
                axis(x_type, x_values, plot_limits),
                axis(y_type, y_values, plot_limits),
                axis(z_type, z_values, plot_limits),
            )
            model = manager.model
            models = allowed_models(switch, user)
            cells = plan(base, axes, model.name, models, limits, plot_limits, model.native_size)
            for warning in warnings_before(model, base, limits):
                gr.Warning(warning)

            def load(name: str) -> None:
                if name == model.name:  # the plot's first model, loaded again at its end
                    manager.load(model.source, config=model.config, by=model.loaded_by)
                    return
                source, allow_local = switch.source(name, user)
                manager.load(source, allow_local=allow_local, by=user or "an X/Y/Z plot")

            images: dict[int, Image.Image] = {}
            done: list[dict] = []
            captions = _captions(cells, axes)
            shown = grid_shown = -math.inf  # when the progress bar and the grid last changed
            progress(0, desc=f"Cell 1 of {len(cells)}")

            def outputs(final: bool) -> tuple:
                grid = grid_image(cells, images, axes)
                if not final:
                    grid.thumbnail((PARTIAL_GRID, PARTIAL_GRID))
                    return grid, gr.skip(), done
                grid = with_recipe(grid, recipe(base, axes, cells, model.name))
                return grid, [(images[i], captions[i]) for i in sorted(images)], done

            try:
                for item in run_cells(manager, cells, limits, owner, load if models else None):
                    if isinstance(item, CellStep):
                        step = item.update
                        if step.previews or time.monotonic() - shown >= PREVIEW_EVERY:
                            fraction = (item.index + step.step / max(1, step.total)) / item.total
                            progress(fraction, desc=item.describe())
                            shown = time.monotonic()
                        if not step.previews:  # none was due at this step
                            continue
                        if not watched:  # no preview for an API caller, but a yield: Gradio cancels a job only there
                            yield gr.skip(), gr.skip(), gr.skip()
                            continue
                        preview = f"Cell {item.index + 1} of {item.total}: {captions[item.index]}"
                        yield gr.skip(), [(step.previews[0], preview)], gr.skip()
                        continue
                    assert isinstance(item, CellDone)
                    images[item.index] = item.result.images[0]
                    done.append({**cells[item.index].parameters(), "infotext": item.result.infotexts[0]})
                    if watched and item.index + 1 < item.total and time.monotonic() - grid_shown >= PARTIAL_GRID_EVERY:
                        grid_shown = time.monotonic()
                        yield outputs(final=False)
            except Cancelled as stopped:
                where = f"Stopped at cell {len(images) + 1} of {len(cells)}"
                if not watched:  # an API caller: a stopped plot has no result, and must not look like one
                    raise gr.Error(f"{where}.") from None
                kept = f"{len(images)} finished cell{'' if len(images) == 1 else 's'}"
                gr.Info(f"{where} ({stopped}). The grid keeps the {kept}.")
            except UserError as error:  # the model was switched under the plot: keep what it made on the page
                if not watched or not images:
                    raise
                gr.Warning(without_paths(str(error)))
            yield outputs(final=True)

    inputs = [
        *c.inputs(), c.width, c.height, c.batch_size, c.schedule,
        *(component for row in rows for component in row), image, strength,
    ]  # fmt: skip
    event = generate.click(
        xyz, inputs, [grid, gallery, cells_json], api_name="xyz", show_progress_on=cells_json, **PLOT
    )
    wire_stop(manager, stop, event)
    page.follow_model(c)
    page.one_job_per_session.append(PLOT["concurrency_id"])  # one plot per session (its cells join the GPU's)


TAB = Tab("xyz", "X/Y/Z plot", build)
