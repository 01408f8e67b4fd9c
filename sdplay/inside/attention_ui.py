"""The Inside tab's attention section: click a place of the image to see where it looks (self-attention, one UNet
call) and which of the prompt's tokens it reads (cross-attention, from the recorded maps), at the Explain tab's step.

Layout and wiring only; the logic and the drawing are in sdplay/inside/attention.py.
"""

from dataclasses import dataclass

import gradio as gr

from sdplay.explain.captions import Caption
from sdplay.explain.render import ExplainView, block_order
from sdplay.explain.ui import ExplainControls, panel_caption, step_index
from sdplay.inside.attention import (
    ALL_BLOCKS,
    PointAttention,
    PointRequest,
    attend_at,
    head_images,
    head_table,
    marked,
    recorded_shares,
    self_attention_image,
    share_chart,
    token_labels,
)
from sdplay.inside.unet_step import step_input
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.ui.common import GPU, job_result, user_errors, without_paths

QUIET = {"api_visibility": "private", "show_progress": "hidden"}
CAPTIONS = {
    "self": Caption(
        "Self-attention: where the outlined place looks in the image (bright), at this step, in the chosen block.",
        "In a self-attention layer every place of the image asks a question (its query q) and every place offers "
        "an answer (its key k); the match q·k/√d, turned into shares that add up to 1 by a softmax, says how much "
        "of each place's content is mixed into this one. That is how the model keeps distant parts of one object "
        "consistent. The map is the outlined place's row of softmax(q·kᵀ/√d), averaged over the block's "
        "self-attention layers and their heads (*Per head* shows each head on its own: heads learn different "
        "questions). It is computed on demand by running the UNet once at this step, keeping only this row.",
    ),
    "cross": Caption(
        "Cross-attention: how the outlined place's attention divides over the prompt's tokens (the shares add up "
        "to 1).",
        "In a cross-attention layer each place of the image asks its question of the prompt's tokens instead: "
        "the words tie themselves to places this way. The bars are read from the maps recorded during the run "
        "(averaged over the block's layers and heads), so they work on replayed runs without the model. The start "
        "token often takes a large share: attention must add up to 1, and places that need no word park it there. "
        "*Per head* runs the UNet once to split the shares by head.",
    ),
}


def block_choices(shown: ExplainView) -> list[tuple[str, str]]:
    """The run's blocks with attention, as "up 3 · 16×16" labels, in the order data flows."""
    blocks = sorted(shown.run.attention, key=block_order)
    return [
        (f"{short(block)} · {'×'.join(map(str, shown.run.attention[block].shape[-2:]))}", block) for block in blocks
    ]


def short(block: str) -> str:
    kind, _, index = block.partition(".")
    return f"{kind.split('_')[0]} {index}".strip()


def clicked(shown: ExplainView, event: gr.SelectData) -> tuple[float, float]:
    """The clicked pixel of the picture (drawn at the view's size) as fractions of its width and height."""
    x, y = event.index
    width, height = shown.size
    return (min(max((x + 0.5) / width, 0.0), 1.0), min(max((y + 0.5) / height, 0.0), 1.0))


@dataclass
class PointViews:
    """The section's components: the picture to click, the two views of the point, their block choices, and the
    per-head views (in `head_row`, shown on demand)."""

    point: gr.State  # (x, y) as fractions of the image, or None before a click
    picker: gr.Image
    self_map: gr.Image
    self_note: gr.Markdown
    bars: gr.Image
    self_block: gr.Dropdown
    cross_block: gr.Dropdown
    per_head: gr.Checkbox
    head_row: gr.Row
    heads: gr.Gallery
    table: gr.Image

    def looked(self) -> list:
        """What `attention_at` draws."""
        return [self.self_map, self.self_note, self.head_row, self.heads, self.table]


def point_views() -> PointViews:
    """Lay out the section: the picture, the two views beside it, the block choices, captions, the per-head row."""
    gr.Markdown("## Attention at a point")
    gr.Markdown("Click a place in the image: where does it look, and which words does it read?")
    point = gr.State(None)
    with gr.Row():
        with gr.Column(min_width=200):
            picker = gr.Image(label="Click a place", format="png", interactive=False, elem_classes="point-picker")
        with gr.Column(min_width=200):
            self_map = gr.Image(
                label="Where this place looks", format="jpeg", interactive=False, elem_classes="self-attention"
            )
            self_note = gr.Markdown()
        with gr.Column(scale=2, min_width=320):
            bars = gr.Image(
                label="Which tokens this place reads", show_label=False, format="png", interactive=False,
                elem_classes="token-shares",
            )  # fmt: skip
    with gr.Row():
        self_block = gr.Dropdown([], label="Self-attention block")
        cross_block = gr.Dropdown([], label="Cross-attention block")
        per_head = gr.Checkbox(False, label="Per head (runs the UNet once)")
    with gr.Row():
        with gr.Column():
            panel_caption(CAPTIONS["self"])
        with gr.Column():
            panel_caption(CAPTIONS["cross"])
    with gr.Row(visible=False) as head_row:
        heads = gr.Gallery(label="Self-attention per head", format="jpeg", columns=4, height="auto", interactive=False)
        table = gr.Image(label="Cross-attention per head", show_label=False, format="png", interactive=False)
    return PointViews(
        point, picker, self_map, self_note, bars, self_block, cross_block, per_head, head_row, heads, table
    )


def build(manager: ModelManager, limits: Limits, explained: ExplainControls) -> None:
    v = point_views()
    view, step = explained.view, explained.step
    cleared = [v.picker, v.self_block, v.cross_block, v.self_map, v.bars, v.self_note, v.point, v.head_row]
    view.change(new_run, view, cleared, **QUIET)

    def look(request: gr.Request, **point) -> tuple:
        return attention_at(manager, limits, request, **point)

    def look_at_click(request: gr.Request, event: gr.SelectData, **point) -> tuple:
        return attention_at_click(manager, limits, request, event, **point)

    chosen = {"shown": view, "at": step, "block": v.self_block, "split": v.per_head}
    v.picker.select(pick, [view, step, v.cross_block], [v.point, v.picker, v.bars], **QUIET)
    v.picker.select(look_at_click, inputs_kwargs=chosen, outputs=v.looked(), **QUIET, **GPU)
    gr.on(
        [v.self_block.input, v.per_head.input], look, inputs_kwargs=chosen | {"where": v.point},
        outputs=v.looked(), **QUIET, **GPU,
    )  # fmt: skip
    gr.on(
        [step.change, v.cross_block.input], draw_bars, [view, step, v.cross_block, v.point], [v.picker, v.bars],
        **QUIET,
    )  # fmt: skip


def new_run(shown: ExplainView | None) -> tuple:
    """A new run on the Explain tab: its image to click on, its blocks, and nothing shown from the last one."""
    if shown is None:
        return (gr.skip(),) * 8
    choices = block_choices(shown)
    return (
        shown.image,
        gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None),  # the last: the finest grid
        gr.Dropdown(choices=[(ALL_BLOCKS, ALL_BLOCKS), *choices], value=ALL_BLOCKS),
        None,
        None,
        "",
        None,
        gr.Row(visible=False),
    )


def draw_bars(shown: ExplainView | None, at: int, block: str | None, where: tuple[float, float] | None) -> tuple:
    """The picture with the point marked, and the cross-attention shares of the point, from the recorded maps."""
    if shown is None or where is None or not block:
        return gr.skip(), gr.skip()
    with user_errors():
        index = step_index(at, shown.run.steps)
        shares = recorded_shares(shown.run, index, block, where)
    title = f"Step {index + 1} · {short(block) if block != ALL_BLOCKS else 'all blocks'}"
    picture = marked(shown.image, shares.grid, shares.cell)
    return picture, share_chart(shares.labels, shares.shares, title)


def pick(shown: ExplainView | None, at: int, block: str | None, event: gr.SelectData) -> tuple:
    """A click on the picture: the point, and its cross-attention bars."""
    if shown is None:
        return gr.skip(), gr.skip(), gr.skip()
    where = clicked(shown, event)
    return where, *draw_bars(shown, at, block, where)


def attention_at(
    manager: ModelManager,
    limits: Limits,
    request: gr.Request | None,
    *,
    shown: ExplainView | None,
    at: int,
    block: str | None,
    split: bool,
    where: tuple[float, float] | None,
) -> tuple:
    """Self-attention at the point (and cross-attention per head): a job. A run the loaded model did not make
    (a replay) says so under the map: the bars beside it still work."""
    if shown is None or where is None or not block:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    index = step_index(at, shown.run.steps)
    try:
        with user_errors():
            job = PointRequest(step_input(shown.run, index), block, tuple(where), cross_heads=split)
            found: PointAttention = job_result(manager, attend_at, job, limits, request)
    except gr.Error as error:
        return None, f"*{without_paths(error.message)}*", gr.skip(), gr.skip(), gr.skip()
    note = (
        f"Step {index + 1} · {short(block)} · {found.grid[0]}×{found.grid[1]} places · averaged over "
        f"{len(found.layers)} layer{'s' if len(found.layers) > 1 else ''} and {found.self_rows.shape[1]} heads"
    )
    if not split:
        return self_attention_image(shown.image, found), note, gr.Row(visible=False), gr.skip(), gr.skip()
    labels = token_labels(shown.run.tokens)
    return (
        self_attention_image(shown.image, found),
        note,
        gr.Row(visible=True),
        head_images(shown.image, found),
        head_table(labels, found.cross_heads(), f"Cross-attention per head · {short(block)}"),
    )


def attention_at_click(
    manager: ModelManager,
    limits: Limits,
    request: gr.Request | None,
    event: gr.SelectData,
    *,
    shown: ExplainView | None,
    at: int,
    block: str | None,
    split: bool,
) -> tuple:
    """`attention_at` the clicked point, which it reads from the click: `pick` may not have stored it yet."""
    where = clicked(shown, event) if shown else None
    return attention_at(manager, limits, request, shown=shown, at=at, block=block, split=split, where=where)
