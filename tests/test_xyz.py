"""The X/Y/Z plot: A1111's value syntax, the caps, the cells' order, the grid and its recipe, and that every cell is
the very image a single run with its settings makes (through the functions the app uses, and through /xyz)."""

import io
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec
from sdplay.runtime.generate import Cancelled, generate
from sdplay.runtime.metadata import parse_infotext, read_infotext
from sdplay.runtime.models import ModelManager
from sdplay.runtime.random_models import tiny_pipeline
from sdplay.runtime.request import GenerationRequest, Limits, PlotLimits, Task
from sdplay.xyz.plot import (
    AXIS_TYPES,
    RECIPE_KEY,
    CellDone,
    CellStep,
    axis,
    grid_image,
    parse_values,
    plan,
    recipe,
    run_cells,
    with_recipe,
)

BASE = GenerationRequest(prompt="a red cat", sampler="Euler", steps=3, guidance_scale=7, seed=5, width=64, height=64)
NO_AXIS = axis("Nothing", "")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("kind", "text", "values"),
    [
        # A1111's own examples (its wiki's "X/Y/Z plot" section).
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", "1-5 (+2)", [1, 3, 5]),
        ("Steps", "10-5 (-3)", [10, 7]),
        ("Steps", "1-3 [5]", [1, 1, 2, 2, 3]),  # a count: numpy.linspace, truncated to integers as A1111 does
        ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),
        ("CFG Scale", "0.5-1.5 (+0.25)", [0.5, 0.75, 1.0, 1.25, 1.5]),
        ("CFG Scale", "1-2 [3]", [1.0, 1.5, 2.0]),
        ("CFG Scale", "0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # float error neither adds nor drops the end
        ("CFG Scale", "7, 7.5, 1-2", [7.0, 7.5, 1.0, 2.0]),
        ("Seed", "-1, 5, 10-12", [-1, 5, 10, 11, 12]),
        ("Sampler", 'Euler, "DPM++ 2M", Euler a', ["Euler", "DPM++ 2M", "Euler a"]),
        ("Prompt S/R", 'red, "green, blue" , ,yellow', [("red", "red"), ("red", "green, blue"), ("red", "yellow")]),
        ("Nothing", "anything", [None]),
    ],
)
def test_values_parse_as_a1111_reads_them(kind, text, values):
    assert parse_values(AXIS_TYPES[kind], text) == values


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("Steps", "abc", "Steps values must be numbers or ranges (1-5, 1-5 (+2), 1-5 [3]); got 'abc'"),
        ("Steps", "2.5", "Steps values must be whole numbers; got '2.5'"),
        ("Steps", "1-5 (+0)", "has a step of 0"),
        ("Steps", "5-1", "make no values"),
        ("Steps", "1-1000000", "makes 1000000 values; a plot has at most 64 cells"),
        ("Seed", "1-3 [0]", "the count in [ ] must be at least 1"),
        ("CFG Scale", "inf", "finite"),
        ("Steps", " , ", "Give the Steps axis some values"),
    ],
)
def test_bad_values_are_a_clear_user_error(kind, text, message):
    with pytest.raises(UserError) as error:
        parse_values(AXIS_TYPES[kind], text)
    assert message in str(error.value)


def test_unknown_axis_types_list_the_known_ones():
    with pytest.raises(UserError, match="Unknown axis type 'Colour'. Choose one of: Nothing, Seed, Steps"):
        axis("Colour", "red")
    assert axis("cfg scale", "7").type.name == "CFG Scale"  # as the API may spell it


@pytest.mark.parametrize(
    ("axes", "base", "message"),
    [
        ((axis("Prompt S/R", "dog, cat"),), BASE, "Prompt S/R: the first value 'dog' is not in the prompt"),
        ((axis("Sampler", "Euler, Nope"),), BASE, "Sampler: Nope: Unknown sampler 'Nope'. Choose one of: Euler,"),
        ((axis("Steps", "1, 500"),), BASE, "Steps: 500: steps must be between 1 and 150"),
        ((axis("Schedule type", "Karras"), axis("Sampler", "DDIM")), BASE, "DDIM sampler has no Karras schedule"),
        ((axis("Denoising strength", "0.5"),), BASE, "The Denoising strength axis needs a start image"),
        ((axis("Model", "tiny"),), BASE, "the Model axis is turned off"),
        ((axis("Steps", "1"), axis("Steps", "2")), BASE, "Two axes have the type Steps"),
        ((axis("Steps", "1"),), GenerationRequest(batch_size=2), "set Batch size to 1"),
    ],
)
def test_a_plan_refuses_bad_cells_before_anything_runs(axes, base, message):
    axes = (*axes, NO_AXIS, NO_AXIS)[:3]
    with pytest.raises(UserError) as error:
        plan(base, axes, "tiny", models=None)
    assert message in str(error.value)


def test_caps_are_checked_with_the_count_in_the_message():
    axes = (axis("Seed", "1-9"), axis("Steps", "1-8"), NO_AXIS)
    with pytest.raises(UserError, match=r"This plot has 72 cells \(9 × 8 × 1\); the limit is 64\."):
        plan(BASE, axes, "tiny")
    assert len(plan(BASE, axes, "tiny", plot_limits=PlotLimits(max_cells=72))) == 72
    big = GenerationRequest(prompt="cat", width=1024, height=1024)
    with pytest.raises(UserError, match=r"This plot's 5 images have 5\.2 megapixels in all; the limit is 4\."):
        plan(big, (axis("Seed", "1-5"), NO_AXIS, NO_AXIS), "tiny", plot_limits=PlotLimits(max_megapixels=4))
    # A size of 0 is the model's native size (text-to-image): 4 × 512² = 1.05 Mpx.
    with pytest.raises(UserError, match="4 images have 1.0 megapixels"):
        zero = GenerationRequest(prompt="cat")
        plan(zero, (axis("Seed", "1-4"), NO_AXIS, NO_AXIS), "t", plot_limits=PlotLimits(max_megapixels=1))


def test_cells_run_x_fastest_then_y_then_z_and_share_one_drawn_seed():
    axes = (axis("Steps", "1, 2"), axis("CFG Scale", "3, 4"), axis("Prompt S/R", "red, blue"))
    cells = plan(GenerationRequest(prompt="a red cat", seed=-1), axes, "tiny")
    assert [c.position for c in cells[:5]] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1)]
    assert [(c.request.steps, c.request.guidance_scale, c.request.prompt) for c in cells[:5]] == [
        (1, 3.0, "a red cat"), (2, 3.0, "a red cat"), (1, 4.0, "a red cat"), (2, 4.0, "a red cat"),
        (1, 3.0, "a blue cat"),
    ]  # fmt: skip
    assert len({c.request.seed for c in cells}) == 1 and cells[0].request.seed != -1
    seeds = plan(BASE, (axis("Seed", "-1, 7"), NO_AXIS, NO_AXIS), "tiny")
    assert seeds[0].request.seed != -1 and seeds[1].request.seed == 7


def test_the_model_axis_runs_outermost_so_that_each_model_loads_once():
    axes = (axis("Model", "b, a"), axis("Steps", "1, 2"), NO_AXIS)
    cells = plan(BASE, axes, "a", models=["a", "b"])
    assert [(c.model, c.position) for c in cells] == [
        ("b", (0, 0, 0)),
        ("b", (0, 1, 0)),
        ("a", (1, 0, 0)),
        ("a", (1, 1, 0)),
    ]
    with pytest.raises(UserError, match="Unknown model 'c' on the Model axis. Choose among: a, b"):
        plan(BASE, (axis("Model", "a, c"), NO_AXIS, NO_AXIS), "a", models=["a", "b"])


def dark_pixels(grid: np.ndarray, box: tuple[int, int, int, int]) -> int:
    left, top, right, bottom = box
    return int((grid[top:bottom, left:right] < 100).all(axis=2).sum())


def test_the_grid_labels_every_row_column_and_subgrid_and_keeps_a_place_for_missing_cells(tmp_path):
    axes = (axis("Steps", "1, 2, 3"), axis("CFG Scale", "1, 7.5"), axis("Prompt S/R", "red, green"))
    cells = plan(BASE, axes, "tiny")
    colours = {i: Image.new("RGB", (64, 64), (0, 30 + 10 * i, 200)) for i in range(len(cells)) if i != 4}
    grid = grid_image(cells, colours, axes)
    array = pixels(grid)
    # The cells' colours find where each cell went: the bottom-right corner holds the last one.
    width, height = grid.size
    assert tuple(array[height - 1, width - 1]) == (0, 30 + 10 * 11, 200)
    first = np.argwhere((array == (0, 30, 200)).all(axis=2))
    (top, left), (bottom, right) = first.min(axis=0), first.max(axis=0) + 1
    assert (right - left, bottom - top) == (64, 64)
    assert dark_pixels(array, (left, 0, left + 64, top)) > 20  # "red", then "Steps: 1" above the first cell
    assert dark_pixels(array, (0, top, left, top + 64)) > 20  # "CFG Scale: 1" left of it
    # Cell 4 (Steps 2, CFG 7.5) did not finish: a grey square holds its place.
    assert tuple(array[top + 64 + 32, left + 64 + 32]) == (200, 200, 200)
    # Labels are wrapped to the cell width, never cut: the font is at least 12 px for 64 px cells.
    long = (axis("Prompt S/R", "red, a very long replacement text that cannot fit"), NO_AXIS, NO_AXIS)
    wrapped = grid_image(plan(BASE, long, "tiny"), {}, long)
    assert wrapped.width == 128 and wrapped.height > 64 + 4 * 12


def test_the_grid_png_carries_the_recipe_and_an_a1111_parameters_line(tmp_path):
    axes = (axis("Steps", "1-2"), axis("Sampler", 'Euler, "DPM++ 2M"'), NO_AXIS)
    cells = plan(BASE, axes, "tiny")
    grid = with_recipe(grid_image(cells, {}, axes), recipe(BASE, axes, cells, "tiny"))
    path = tmp_path / "grid.png"
    grid.save(path, pnginfo=_pnginfo(grid))
    saved = Image.open(path)
    plot = json.loads(saved.text[RECIPE_KEY])
    assert plot["axes"][0] == {"name": "X", "type": "Steps", "values": "1-2"}
    assert [(c["steps"], c["sampler"]) for c in plot["cells"]] == [
        (1, "Euler"),
        (2, "Euler"),
        (1, "DPM++ 2M"),
        (2, "DPM++ 2M"),
    ]
    info = parse_infotext(read_infotext(saved))
    assert (
        info.prompt == "a red cat"
        and info.params["X Type"] == "Steps"
        and info.params["Y Values"] == 'Euler, "DPM++ 2M"'
    )


def _pnginfo(image: Image.Image):
    from gradio.processing_utils import get_pil_metadata  # what Gradio writes into the PNG it serves

    return get_pil_metadata(image)


def single_run(manager: ModelManager, request: GenerationRequest) -> Image.Image:
    """The image of `request` as a single run makes it: a job on the executor's thread, where the cells run too (the
    test's own thread may run torch on another number of threads, whose sums can differ in the last bit)."""
    *_, result = manager.executor.run(JobSpec(generate, request, Limits()))
    return result.images[0]


def run_plot(manager: ModelManager, cells, limits=Limits(), **kwargs) -> dict[int, Image.Image]:
    return {
        item.index: item.result.images[0]
        for item in run_cells(manager, cells, limits, **kwargs)
        if isinstance(item, CellDone)
    }


def test_every_cell_is_bit_identical_to_a_single_run(manager):
    axes = (axis("Seed", "3, 4"), axis("Sampler", "Euler, DPM++ 2M"), axis("CFG Scale", "1, 5.5"))
    cells = plan(BASE, axes, manager.model.name)
    images = run_plot(manager, cells)
    assert len(images) == 8
    for index, cell in enumerate(cells):
        # The request as the Text-to-Image tab builds it from the cell's settings.
        single = GenerationRequest(
            task=Task.TXT2IMG, prompt=BASE.prompt, negative_prompt="", sampler=cell.request.sampler,
            schedule=cell.request.schedule, steps=3, guidance_scale=cell.request.guidance_scale,
            seed=cell.request.seed, width=64, height=64, batch_size=1,
        )  # fmt: skip
        alone = single_run(manager, single)
        assert np.array_equal(pixels(images[index]), pixels(alone)), f"cell {index}"
        assert images[index].info["parameters"] == alone.info["parameters"]  # its own infotext


def test_img2img_cells_equal_single_img2img_runs(manager, tmp_path):
    source = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    base = GenerationRequest(task=Task.IMG2IMG, prompt="a cat", sampler="Euler", steps=4, seed=2, image=str(source))
    axes = (axis("Denoising strength", "0.5, 1"), NO_AXIS, NO_AXIS)
    cells = plan(base, axes, manager.model.name)
    images = run_plot(manager, cells)
    for index, strength in enumerate([0.5, 1.0]):
        alone = single_run(manager, replace(base, strength=strength))
        assert np.array_equal(pixels(images[index]), pixels(alone))
        assert "Denoising strength: " in images[index].info["parameters"]


def test_stop_ends_the_plot_in_the_current_cell_and_keeps_the_finished_ones(manager):
    cells = plan(replace(BASE, steps=8), (axis("Seed", "1-3"), NO_AXIS, NO_AXIS), manager.model.name)
    finished = {}
    with pytest.raises(Cancelled, match="Stopped at step"):
        for item in run_cells(manager, cells, Limits(), owner="me"):
            if isinstance(item, CellDone):
                finished[item.index] = item.result.images[0]
            elif isinstance(item, CellStep) and item.index == 1:
                assert item.describe().startswith("Cell 2 of 3 · Step")
                manager.interrupt("me")
    assert list(finished) == [0]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xyz-models")
    return {"tiny": tiny_pipeline(folder / "tiny"), "other": tiny_pipeline(folder / "other", seed=1)}


def test_model_cells_load_each_model_once_equal_single_runs_and_the_first_model_comes_back(two_models):
    manager = local_manager(device="cpu")
    manager.load(str(two_models["tiny"]))
    loads = []

    def load(name: str) -> None:
        loads.append(name)
        manager.load(str(two_models[name]))

    axes = (axis("Seed", "1, 2"), axis("Model", "other, tiny"), NO_AXIS)
    cells = plan(BASE, axes, "tiny", models=list(two_models))
    images = run_plot(manager, cells, load=load)
    assert loads == ["other", "tiny"] and manager.model.name == "tiny"
    for index, cell in enumerate(cells):
        manager.load(str(two_models[cell.model]))
        alone = single_run(manager, cell.request)
        assert (
            np.array_equal(pixels(images[index]), pixels(alone)) and f"Model: {cell.model}" in alone.info["parameters"]
        )
    # A model switched under a plot by someone else stops it with a clear message.
    manager.load(str(two_models["tiny"]))
    plain = plan(BASE, (axis("Seed", "1, 2"), NO_AXIS, NO_AXIS), "tiny")
    with pytest.raises(UserError, match="The model was switched to other during the plot: it stopped before cell 2"):
        for item in run_cells(manager, plain, Limits()):
            if isinstance(item, CellDone):
                manager.load(str(two_models["other"]))


def test_the_caps_are_flags_with_environment_variables(monkeypatch, capsys):
    from app import parse_args

    assert (parse_args([]).max_plot_cells, parse_args([]).max_plot_megapixels) == (64, 64.0)
    monkeypatch.setenv("SDPLAY_MAX_PLOT_CELLS", "9")
    assert (
        parse_args(["--max-plot-megapixels", "2.5"]).max_plot_megapixels == 2.5 and parse_args([]).max_plot_cells == 9
    )
    with pytest.raises(SystemExit):
        parse_args(["--max-plot-cells", "0"])
    assert "--max-plot-cells and --max-plot-megapixels must be positive" in capsys.readouterr().err


# The API, on `python app.py` with the tiny model (the session's served app).
XYZ_ARGS = dict(
    prompt="a red cat", negative_prompt="", sampler="Euler", steps=3, guidance_scale=7, seed=5, width=64, height=64
)


def test_xyz_api_takes_the_txt2img_parameters_and_the_axes(client: Client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    txt2img = [p["parameter_name"] for p in endpoints["/txt2img"]["parameters"]]
    names = [p["parameter_name"] for p in endpoints["/xyz"]["parameters"]]
    assert names[: len(txt2img)] == txt2img
    assert names[len(txt2img) : len(txt2img) + 6] == ["x_type", "x_values", "y_type", "y_values", "z_type", "z_values"]


def test_xyz_api_returns_the_grid_the_cells_and_their_parameters_and_each_cell_equals_txt2img(client: Client):
    grid, gallery, cells = client.predict(
        **XYZ_ARGS, x_type="CFG Scale", x_values="1, 7", y_type="Seed", y_values="5-6", api_name="/xyz"
    )
    saved = Image.open(grid)
    assert json.loads(saved.text[RECIPE_KEY])["axes"][1] == {"name": "Y", "type": "Seed", "values": "5-6"}
    assert len(gallery) == len(cells) == 4
    assert [(c["guidance_scale"], c["seed"]) for c in cells] == [(1.0, 5), (7.0, 5), (1.0, 6), (7.0, 6)]
    for cell, item in zip(cells, gallery, strict=True):
        settings = {"guidance_scale": cell["guidance_scale"], "seed": cell["seed"]}
        single, infotext, _ = client.predict(**{**XYZ_ARGS, **settings}, api_name="/txt2img")
        assert np.array_equal(pixels(Image.open(item["image"])), pixels(Image.open(single[0]["image"])))
        assert cell["infotext"] == infotext == read_infotext(Image.open(item["image"]))


def test_xyz_api_refuses_a_plot_too_big_or_wrong_with_the_reason_and_keeps_serving(client: Client):
    with pytest.raises(AppError, match=r"This plot has 81 cells \(9 × 9 × 1\); the limit is 64"):
        client.predict(**XYZ_ARGS, x_type="Seed", x_values="1-9", y_type="Steps", y_values="1-9", api_name="/xyz")
    with pytest.raises(AppError, match="Prompt S/R: the first value 'dog' is not in the prompt"):
        client.predict(**XYZ_ARGS, x_type="Prompt S/R", x_values="dog, cat", api_name="/xyz")
    with pytest.raises(AppError, match="Unknown model 'nobody/else' on the Model axis. Choose among: tiny"):
        client.predict(**XYZ_ARGS, x_type="Model", x_values="nobody/else", api_name="/xyz")
    _, _, cells = client.predict(**XYZ_ARGS, x_type="Steps", x_values="1-2", api_name="/xyz")
    assert [c["steps"] for c in cells] == [1, 2]


def test_other_sessions_jobs_run_between_the_cells_of_a_plot(app_url: str):
    plotter, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    plot = plotter.submit(**{**XYZ_ARGS, "steps": 10}, x_type="Seed", x_values="1-6", api_name="/xyz")
    # Wait until the plot runs, then ask for one image: it must come back before the plot's last cell is done.
    waiting = threading.Event()
    for _ in range(600):
        if plot.status().code.name in ("PROCESSING", "ITERATING", "PROGRESS"):
            break
        waiting.wait(0.05)
    other.predict(**XYZ_ARGS, api_name="/txt2img")
    assert not plot.done(), "the single image waited for the whole plot"
    assert len(plot.result()[2]) == 6


def test_an_api_plot_knows_its_caller_and_streams_no_previews(client: Client):
    """The handler gets Gradio's request (a keyword-only `request` would stay None and make every caller look like
    the web page): an API caller's plot yields between steps, so that it can be stopped, but only its final output
    carries the cells."""
    plot = client.submit(**XYZ_ARGS, x_type="Seed", x_values="1-2", api_name="/xyz")
    assert len(plot.result()[2]) == 2
    *streamed, final = plot.outputs()
    assert streamed and not any(isinstance(gallery, list) for _, gallery, _ in streamed)
    assert len(final[1]) == 2


@pytest.mark.browser
def test_the_tab_draws_a_2x2_plot_in_the_browser(page, page_errors: list[str]):
    from playwright.sync_api import expect

    tab = page.get_by_role("tab", name="X/Y/Z plot", exact=True)
    tab.click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.get_by_label("Prompt", exact=True).fill("a red cat")
    panel.get_by_label("X values", exact=True).fill("2, 3")
    panel.get_by_label("Y type", exact=True).click()
    page.get_by_role("option", name="CFG Scale", exact=True).click()
    panel.get_by_label("Y values", exact=True).fill("1, 7")
    panel.get_by_role("button", name="Generate").click()
    cells = panel.locator(".gallery-item img, button.thumbnail-item img")
    expect(cells).to_have_count(4, timeout=60_000)
    grid = panel.locator(".xyz-grid img")
    expect(grid).to_have_attribute("src", re.compile(r"/gradio_api/file=.*\.png$"))
    served = Image.open(io.BytesIO(page.request.get(grid.get_attribute("src")).body()))
    assert served.width > 2 * 64 and served.height > 2 * 64  # two cells each way, with their labels
    assert json.loads(served.text[RECIPE_KEY])["axes"][1]["type"] == "CFG Scale"
    page.screenshot(path=Path(__file__).parent / "artifacts" / "xyz.png", full_page=True)  # git-ignored
    assert page_errors == []


@pytest.mark.browser
def test_stop_in_the_browser_ends_the_plot_in_its_cell_and_keeps_the_finished_ones(page, page_errors: list[str]):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="X/Y/Z plot", exact=True).click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.get_by_label("Prompt", exact=True).fill("a red cat")
    for name, value in {"Width": "512", "Height": "512"}.items():  # slow enough to stop in the second cell
        panel.get_by_label(f"number input for {name}").fill(value)
    panel.get_by_label("X values", exact=True).fill("2, 150")
    panel.get_by_role("button", name="Generate").click()
    progress = panel.get_by_role("progressbar", name=re.compile(r"^Cell 2 of 2 · Step \d+\/150 · about"))
    expect(progress).to_be_visible(timeout=60_000)
    panel.get_by_role("button", name="Stop").click()
    message = re.compile(
        r"^Stopped at cell 2 of 2 \(Stopped at step \d+ of 150\.\)\. The grid keeps the 1 finished cell\.$"
    )
    expect(page.get_by_text(message)).to_be_visible(timeout=60_000)
    expect(panel.locator(".gallery-item img, button.thumbnail-item img")).to_have_count(1)
    expect(panel.get_by_role("img", name="Steps: 2", exact=True)).to_be_visible()
    grid = panel.locator(".xyz-grid img")
    served = Image.open(io.BytesIO(page.request.get(grid.get_attribute("src")).body()))
    assert [cell["steps"] for cell in json.loads(served.text[RECIPE_KEY])["cells"]] == [2, 150]  # the plot it was
    assert page_errors == []
