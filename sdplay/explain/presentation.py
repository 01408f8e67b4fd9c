"""The Explain tab's presentation mode: one screen for a projector, with the step slider and Play on top, the five
panels that tell the story in large type, the x̂₀ filmstrip, and keys (←/→ step, space play, 1–9 a word, Esc exit).

It shows the run on the Explain tab, recorded or replayed. On entering (and on picking a word) the server draws
every step's panels once (`reel`) and sends them with the page, which then steps through them itself: scrubbing
needs no round trip to the server. Its look (large type, one screen, no scrolling) is the presentation CSS in
ui/style.py.
"""

import base64
import html
import io
import re
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from sdplay.explain.filmstrip import Filmstrip, strip_layout
from sdplay.explain.render import COLORMAPS, ExplainView, HeatmapSettings, content_word

PLAY_SECONDS = 0.8  # as the Explain tab's own Play
# One short line per panel, read from the back of a room (the Explain tab's captions explain more).
CAPTIONS = {
    "final": "Where the run ends.",
    "x0": "The model's guess of the end result, now.",
    "x_t": "What the model is cleaning now.",
    "heatmap": "Bright: the parts that look at the word.",
    "guidance": "What the prompt adds (grey: nothing).",
}
LABELS = {
    "final": "Final image",
    "x0": "x̂₀ · prediction",
    "x_t": "x_t · noisy",
    "heatmap": "Word heatmap",
    "guidance": "Guidance term",
}
NO_RUN = "Press **Explain** to record a run, or replay a saved one, then present it."
KEYS = "Keys: ← → step · space play/pause · 1–9 pick a word · Esc leave"

# Runs in the page when the toggle changes: shows the presentation alone (everything around it is hidden, not just
# covered, so that the page cannot scroll), and installs the keys once. Keys do nothing while typing in a text box;
# they are caught on their way down, before a focused slider or button acts on them itself.
SWITCH_JS = """
(on) => {
    const stage = document.querySelector(".sdplay-presentation");
    document.documentElement.classList.toggle("sdplay-presenting", Boolean(on));
    document.querySelectorAll(".sdplay-offstage").forEach((node) => node.classList.remove("sdplay-offstage"));
    for (let node = stage; on && node && node.parentElement && node !== document.body; node = node.parentElement) {
        for (const sibling of node.parentElement.children) {
            // Fixed elements (Gradio's toasts: errors, infos) take no room and must stay visible.
            if (sibling !== node && getComputedStyle(sibling).position !== "fixed") {
                sibling.classList.add("sdplay-offstage");
            }
        }
    }
    if (window.sdplayPresentationKeys) return [];
    window.sdplayPresentationKeys = true;
    const typing = "textarea, select, [contenteditable], "
        + "input:not([type=range]):not([type=radio]):not([type=checkbox])";
    const press = (selector) => stage.querySelector(`${selector} button, button${selector}`)?.click();
    const handle = (event) => {
        if (!document.documentElement.classList.contains("sdplay-presenting")) return;
        if (event.ctrlKey || event.metaKey || event.altKey || event.target.closest?.(typing)) return;
        if (event.key === " ") {
            event.preventDefault();  // no page scroll, and no click on a focused button at key up
            if (event.type === "keydown" && !event.repeat) press(".sdplay-play");
            return;
        }
        if (event.type !== "keydown") return;
        let done = true;
        if (event.key === "ArrowLeft") press(".sdplay-previous");
        else if (event.key === "ArrowRight") press(".sdplay-next");
        else if (event.key === "Escape") press(".sdplay-exit");
        else if (/^[1-9]$/.test(event.key)) {
            stage.querySelectorAll(".sdplay-words input[type=radio]")[Number(event.key) - 1]?.click();
        } else done = false;
        if (done) event.preventDefault();
    };
    document.addEventListener("keydown", handle, true);
    document.addEventListener("keyup", handle, true);
    return [];
}
"""
# ◀ and ▶ step in the page itself: the slider's change then shows the step from the reel.
SLIDER = ".sdplay-present-step input[type=range]"
PREVIOUS_JS = f"(at) => Math.max(Number(document.querySelector('{SLIDER}')?.min ?? 1), at - 1)"
NEXT_JS = f"(at) => Math.min(Number(document.querySelector('{SLIDER}')?.max ?? at), at + 1)"
REEL_SIDE = 320  # pixels: a reel's frames at most this large (a projector shows a panel ~240 px wide)
REEL_PANELS = ("x0", "x_t", "heatmap", "guidance")
# Shows a 1-based step from the reel the page was sent (window.sdplayReel): each panel's image, the label, and an
# outline over the filmstrip's frame (the strip is drawn once without one; Gradio shows it scaled to fit, centred).
SHOW_JS = """
(at) => {
    if (!window.sdplayShow) {
        window.sdplayShow = (at) => {
            const reel = window.sdplayReel;
            const stage = document.querySelector(".sdplay-presentation");
            if (!reel || !stage || !reel.label.length) return;
            const step = Math.min(Math.max(Math.round(Number(at)), 1), reel.label.length) - 1;
            window.sdplayStep = step + 1;
            for (const name of ["x0", "x_t", "heatmap", "guidance"]) {
                const img = stage.querySelector(`.sdplay-panel-${name} img`);
                if (img && img.getAttribute("src") !== reel[name][step]) img.src = reel[name][step];
            }
            const label = stage.querySelector(".sdplay-step-label .prose, .prose.sdplay-step-label");
            if (label) label.innerHTML = reel.label[step];
            const strip = stage.querySelector(".sdplay-filmstrip img");
            if (!strip || !strip.naturalWidth) return;  // outlined when it loads
            const box = strip.closest(".image-container") || strip.parentElement;
            let outline = box.querySelector(".sdplay-strip-outline");
            if (!outline) {
                outline = document.createElement("div");
                outline.className = "sdplay-strip-outline";
                box.style.position = "relative";
                box.appendChild(outline);
            }
            const shown = strip.getBoundingClientRect(), outer = box.getBoundingClientRect();
            const scale = Math.min(shown.width / strip.naturalWidth, shown.height / strip.naturalHeight);
            const left = shown.left - outer.left + (shown.width - strip.naturalWidth * scale) / 2;
            const top = shown.top - outer.top + (shown.height - strip.naturalHeight * scale) / 2;
            const cell = reel.cell[0] * scale;
            Object.assign(outline.style, {
                left: `${left + step * cell}px`, top: `${top}px`, width: `${cell}px`,
                height: `${reel.cell[1] * scale}px`,
            });
        };
        // The strip loads after the reel arrives, and its box changes with the window: outline it again then.
        const again = () => window.sdplayStep && window.sdplayShow(window.sdplayStep);
        document.addEventListener("load", (event) => {
            if (event.target.closest?.(".sdplay-filmstrip")) again();
        }, true);
        window.addEventListener("resize", again);
    }
    window.sdplayShow(at);
    return [];
}
"""


@dataclass
class Slide:
    """What the presentation shows for one step."""

    label: str  # markdown: step k of S, t, σ
    x_t: Image.Image
    x0: Image.Image
    heatmap: Image.Image
    guidance: Image.Image


def slide(view: ExplainView, step: int, settings: HeatmapSettings) -> Slide:
    """The presentation's panels at a 0-based `step`: only these, not the whole Explain view."""
    return Slide(
        label=view.step_label(step),
        x_t=view.preview("x_t", step),
        x0=view.x0(step),
        heatmap=view.heatmap(step, settings)[0],
        guidance=view.noise(step)[2],
    )


def data_url(image: Image.Image) -> str:
    """`image` as a JPEG data URL, shrunk to at most `REEL_SIDE` pixels a side (small runs are not enlarged: the
    page's script draws them with square pixels)."""
    image = image.copy()
    image.thumbnail((REEL_SIDE, REEL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def label_html(markdown: str) -> str:
    """A step label's markdown (plain text with **bold**) as HTML."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(markdown))


def reel(view: ExplainView, settings: HeatmapSettings, strip: Filmstrip) -> dict[str, object]:
    """Every step's slide, for the page to step through without the server: per panel a list of data URLs (one
    per step), the labels as HTML, and the filmstrip's cell size (for its outline)."""
    slides = [slide(view, step, settings) for step in range(view.run.steps)]
    frames = {name: [data_url(getattr(s, name)) for s in slides] for name in REEL_PANELS}
    return {"label": [label_html(s.label) for s in slides], **frames, "cell": list(strip.layout.cell)}


def shown_word(view: ExplainView, chosen: int | None) -> int:
    """The word to show: the Explain tab's if it is a real word, else the prompt's first content word."""
    real = {i for _, i in view.prompt_chips()}
    if chosen in real:
        return chosen
    return content_word(view.words)


def toggle() -> gr.Checkbox:
    """The switch into presentation mode, placed where the Explain tab wants it."""
    return gr.Checkbox(
        False, label="Presentation", info="One screen for a projector: ← → step, space plays, 1–9 pick a word.",
        elem_classes="sdplay-present-toggle",
    )  # fmt: skip


def panel(name: str) -> gr.Image | gr.HTML:
    """A panel: its label above it (Gradio's own floats over the image's corner), the image, its caption. The final
    image is Gradio's; the others are a plain image that the page's script shows each step of the reel in."""
    gr.Markdown(f"**{LABELS[name]}**", elem_classes="sdplay-label")
    classes = f"sdplay-panel sdplay-panel-{name}"
    if name in REEL_PANELS:
        picture = gr.HTML(f'<img class="sdplay-reel-frame" alt="{LABELS[name]}">', elem_classes=classes, padding=False)
    else:
        picture = gr.Image(
            label=LABELS[name], show_label=False, format="png", interactive=False, buttons=[], elem_classes=classes
        )
    gr.Markdown(CAPTIONS[name], elem_classes="sdplay-caption")
    return picture


def filmstrip_panel(view: gr.State, step: gr.Slider, final: gr.Image) -> dict:
    """The x̂₀ filmstrip for the Explain tab's own page, following its step slider (and each new run, whose final
    image changes); a click on a frame moves the slider there. Its box is lower than the strip (104 px): Gradio
    maps a click to the image's pixels right only for an image shown at most at its own size. Returns its redraw
    event, for what else changes its frames (x̂₀ decoded)."""
    gr.Markdown("**x̂₀ at every step**: coarse first, details last (click a frame to go to its step)")
    strip = gr.Image(
        label="x̂₀ at every step", show_label=False, format="jpeg", interactive=False, buttons=[], height=90,
        elem_classes="sdplay-filmstrip-page",
    )  # fmt: skip
    strips = gr.State(None)
    quiet = {"show_progress": "hidden", "api_visibility": "private"}

    def draw(shown: ExplainView | None, value: int, kept: Filmstrip | None):
        if shown is None:
            return gr.skip(), gr.skip()
        kept = kept if kept is not None and kept.view is shown else Filmstrip(shown)
        return kept.draw(min(max(int(value), 1), shown.run.steps) - 1), kept

    redraw = dict(fn=draw, inputs=[view, step, strips], outputs=[strip, strips], **quiet)
    gr.on([step.change, final.change], **redraw)
    strip.select(jump, view, step, **quiet)
    return redraw


def jump(shown: ExplainView | None, event: gr.SelectData):
    """A click on a filmstrip: the 1-based step of the frame clicked."""
    if shown is None or not event.index:
        return gr.skip()
    return strip_layout(shown).step_at(event.index[0]) + 1


def build(
    switch: gr.Checkbox,
    view: gr.State,
    step: gr.Slider,
    chips: gr.Radio,
    colormap: gr.Dropdown,
    opacity: gr.Slider,
    normalisation: gr.Radio,
    shared: str,
) -> None:
    """The presentation screen (hidden until `switch` is on) and its wiring to the Explain tab's run (`view`), step,
    word and heatmap settings. Entering takes the tab's step and word; leaving gives them back."""
    with gr.Column(elem_classes="sdplay-presentation"):
        with gr.Row(elem_classes="sdplay-bar", equal_height=True):
            previous = gr.Button("◀", elem_classes="sdplay-previous", scale=0, min_width=64)
            at = gr.Slider(
                1, 2, value=1, step=1, label="Presentation step", show_label=False, elem_classes="sdplay-present-step"
            )
            following = gr.Button("▶", elem_classes="sdplay-next", scale=0, min_width=64)
            play = gr.Button("▶ Play", elem_classes="sdplay-play", scale=0, min_width=130)
            leave = gr.Button("✕ Leave", elem_classes="sdplay-exit", scale=0, min_width=150)
        label = gr.Markdown(elem_classes="sdplay-step-label")
        word = gr.Radio([], label="Word", show_label=False, elem_classes="sdplay-words")
        with gr.Row(elem_classes="sdplay-panels"):
            with gr.Column(min_width=0):
                final = panel("final")
            with gr.Column(min_width=0):
                panel("x0")
            with gr.Column(min_width=0):
                panel("x_t")
            with gr.Column(min_width=0):
                panel("heatmap")
            with gr.Column(min_width=0):
                panel("guidance")
        gr.Markdown("**x̂₀ at every step**: coarse first, details last (click a frame)", elem_classes="sdplay-label")
        strip = gr.Image(
            label="x̂₀ at every step", show_label=False, format="jpeg", interactive=False, buttons=[],
            elem_classes="sdplay-filmstrip",
        )  # fmt: skip
        gr.Markdown(KEYS, elem_classes="sdplay-keys")
        timer = gr.Timer(PLAY_SECONDS, active=False)
        strips = gr.State(None)  # the shown run's Filmstrip, which keeps its frames
        frames = gr.JSON(visible=False)  # the reel: every step's panels, which the page steps through

    quiet = {"show_progress": "hidden", "api_visibility": "private"}
    drawn = [label, strip, strips, frames]

    def draw(
        shown: ExplainView | None,
        chosen: int | None,
        cmap: str,
        alpha: float,
        scaling: str,
        kept: Filmstrip | None,
    ):
        """The reel of the shown run and word, which the page's script steps through (the label too), and the
        filmstrip, drawn once without its outline (the script draws that)."""
        if shown is None:
            return [NO_RUN] + [gr.skip()] * (len(drawn) - 1)
        kept = kept if kept is not None and kept.view is shown else Filmstrip(shown)
        settings = HeatmapSettings(
            shown_word(shown, chosen), cmap if cmap in COLORMAPS else "viridis", alpha, scaling == shared
        )
        return [gr.skip(), kept.frames(), kept, reel(shown, settings, kept)]

    inputs = [view, word, colormap, opacity, normalisation, strips]
    draw_event = dict(fn=draw, inputs=inputs, outputs=drawn, **quiet)
    word.input(**draw_event)  # a pick; entering sets the word and draws once itself
    frames.change(
        None, [frames, at], None, js=f"(reel, at) => {{ window.sdplayReel = reel; return ({SHOW_JS})(at); }}", **quiet
    )
    at.change(None, at, None, js=SHOW_JS, **quiet)

    def enter(on: bool, shown: ExplainView | None, value: int, chosen: int | None, here: int, here_word: int | None):
        """Entering shows the tab's run at its step and word; leaving gives the tab this screen's step and word
        (the tab then redraws itself) and stops playing."""
        # Stop playing; ◀ ▶ and Play as they were, but for a one-step run (SD-Turbo): nothing to scrub.
        stopped = [gr.Timer(active=False), gr.skip(), gr.skip(), gr.Button("▶ Play")]
        if shown is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *stopped
        steps = shown.run.steps
        if not on:
            given = here_word if here_word is not None else gr.skip()
            return min(int(here), steps), gr.skip(), gr.skip(), gr.skip(), given, *stopped
        scrubbing = steps > 1  # and Gradio refuses a slider from 1 to 1
        slider = gr.Slider(minimum=1, maximum=max(steps, 2), value=min(int(value), steps), interactive=scrubbing)
        # Key n picks the n-th word; an empty prompt has none to pick (its maps are the start token's).
        choices = shown.prompt_chips()
        chips_now = gr.Radio(choices=choices, value=shown_word(shown, chosen) if choices else None)
        buttons = [gr.Button(interactive=scrubbing), gr.Button(interactive=scrubbing)]
        buttons.append(gr.Button("▶ Play", interactive=scrubbing))
        return gr.skip(), slider, chips_now, shown.image, gr.skip(), stopped[0], *buttons

    switch.change(None, switch, None, js=SWITCH_JS, queue=False, **quiet)
    entered = switch.change(
        enter,
        [switch, view, step, chips, at, word],
        [step, at, word, final, chips, timer, previous, following, play],
        **quiet,
    )
    entered.then(**draw_event)
    leave.click(None, None, switch, js="() => false", **quiet)
    previous.click(None, at, at, js=PREVIOUS_JS, **quiet)
    following.click(None, at, at, js=NEXT_JS, **quiet)

    def playing(text: str):
        on = text.startswith("▶")
        return gr.Timer(active=on), gr.Button("⏸ Pause" if on else "▶ Play")

    play.click(playing, play, [timer, play], **quiet)

    def advance(shown: ExplainView | None, value: int):
        return int(value) % shown.run.steps + 1 if shown else gr.skip()

    timer.tick(advance, [view, at], at, **quiet)

    strip.select(jump, view, at, **quiet)
