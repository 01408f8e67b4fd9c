"""The Explain tab's presentation mode: one screen for a projector, with the step slider and Play on top, the final
image and the panels that tell the story in large type (those `render.PANELS` marks `presented`), the x̂₀
filmstrip, and keys (←/→ step, space play, 1–9 a word, Esc exit).

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
from sdplay.explain.render import ExplainView, HeatmapSettings, Presented, content_word, heatmap_settings, presented

PLAY_SECONDS = 0.8  # as the Explain tab's own Play
# The first panel is the run's own image. Each has a short line to read from the back of a room (the Explain tab's
# captions explain more).
FINAL = Presented("Final image", "Where the run ends.", 0)
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
# Shows a 1-based step from the reel the page was sent (window.sdplayReel): each panel's image (the reel's frames
# by panel name), the label, and an outline over the filmstrip's frame (the strip is drawn once without one; Gradio
# shows it scaled to fit, centred).
SHOW_JS = """
(at) => {
    if (!window.sdplayShow) {
        window.sdplayShow = (at) => {
            const reel = window.sdplayReel;
            const stage = document.querySelector(".sdplay-presentation");
            if (!reel || !stage || !reel.label.length) return;
            const step = Math.min(Math.max(Math.round(Number(at)), 1), reel.label.length) - 1;
            window.sdplayStep = step + 1;
            for (const [name, frames] of Object.entries(reel.frames)) {
                const img = stage.querySelector(`.sdplay-panel-${name} img`);
                if (img && img.getAttribute("src") !== frames[step]) img.src = frames[step];
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
class Followed:
    """The Explain tab's parts that presentation mode follows: its run, step, word and heatmap settings."""

    view: gr.State
    step: gr.Slider
    chips: gr.Radio
    colormap: gr.Dropdown
    opacity: gr.Slider
    normalisation: gr.Radio


@dataclass
class Stage:
    """The presentation screen's own parts."""

    previous: gr.Button
    at: gr.Slider
    following: gr.Button
    play: gr.Button
    leave: gr.Button
    label: gr.Markdown
    word: gr.Radio
    final: gr.Image
    strip: gr.Image
    timer: gr.Timer
    strips: gr.State  # the shown run's Filmstrip, which keeps its frames
    frames: gr.JSON  # the reel: every step's panels, which the page steps through

    def drawn(self) -> list:
        """What `draw_stage` updates."""
        return [self.label, self.strip, self.strips, self.frames]


def slide(view: ExplainView, step: int, settings: HeatmapSettings) -> dict[str, object]:
    """The presentation's panels at a 0-based `step` by name (only these, not the whole Explain view), and the
    step's `label`."""
    return {"label": view.step_label(step), **view.draw(step, settings, presented())}


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
    """Every step's slide, for the page to step through without the server: per panel (by name, in `frames`) a
    list of data URLs, one per step; the labels as HTML; and the filmstrip's cell size (for its outline)."""
    slides = [slide(view, step, settings) for step in range(view.run.steps)]
    frames = {panel.name: [data_url(shown[panel.name]) for shown in slides] for panel in presented()}
    return {
        "label": [label_html(shown["label"]) for shown in slides],
        "frames": frames,
        "cell": list(strip.layout.cell),
    }


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


def panel(name: str, shown: Presented, in_reel: bool = True) -> gr.Image | gr.HTML:
    """A panel: its label above it (Gradio's own floats over the image's corner), the image, its caption. The final
    image is Gradio's; the others are a plain image that the page's script shows each step of the reel in."""
    gr.Markdown(f"**{shown.label}**", elem_classes="sdplay-label")
    classes = f"sdplay-panel sdplay-panel-{name}"
    if in_reel:
        frame = f'<img class="sdplay-reel-frame" alt="{html.escape(shown.label)}">'
        picture = gr.HTML(frame, elem_classes=classes, padding=False)
    else:
        picture = gr.Image(
            label=shown.label, show_label=False, format="png", interactive=False, buttons=[], elem_classes=classes
        )
    gr.Markdown(shown.caption, elem_classes="sdplay-caption")
    return picture


def filmstrip_of(view: ExplainView, kept: Filmstrip | None) -> Filmstrip:
    """The filmstrip a page keeps (its frames drawn once), or a new one when the page shows another run."""
    return kept if kept is not None and kept.view is view else Filmstrip(view)


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
    redraw = dict(fn=draw_strip, inputs=[view, step, strips], outputs=[strip, strips], **quiet)
    gr.on([step.change, final.change], **redraw)
    strip.select(jump, view, step, **quiet)
    return redraw


def draw_strip(shown: ExplainView | None, value: int, kept: Filmstrip | None):
    """The page's filmstrip at a 1-based step, and the Filmstrip that keeps its frames."""
    if shown is None:
        return gr.skip(), gr.skip()
    kept = filmstrip_of(shown, kept)
    return kept.draw(min(max(int(value), 1), shown.run.steps) - 1), kept


def jump(shown: ExplainView | None, event: gr.SelectData):
    """A click on a filmstrip: the 1-based step of the frame clicked."""
    if shown is None or not event.index:
        return gr.skip()
    return strip_layout(shown).step_at(event.index[0]) + 1


def play_or_pause(label: str) -> tuple[gr.Timer, gr.Button]:
    """A Play button pressed: its timer on and the button says Pause, or the other way round."""
    playing = label.startswith("▶")
    return gr.Timer(active=playing), gr.Button("⏸ Pause" if playing else "▶ Play")


def next_step(shown: ExplainView | None, at: int):
    """A tick of Play: the next 1-based step, the first after the last."""
    return int(at) % shown.run.steps + 1 if shown else gr.skip()


def stage() -> Stage:
    """The presentation screen's layout: the bar, the step's label, the words, the panels, the filmstrip."""
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
                final = panel("final", FINAL, in_reel=False)
            for shown in presented():
                with gr.Column(min_width=0):
                    panel(shown.name, shown.presented)
        gr.Markdown("**x̂₀ at every step**: coarse first, details last (click a frame)", elem_classes="sdplay-label")
        strip = gr.Image(
            label="x̂₀ at every step", show_label=False, format="jpeg", interactive=False, buttons=[],
            elem_classes="sdplay-filmstrip",
        )  # fmt: skip
        gr.Markdown(KEYS, elem_classes="sdplay-keys")
        timer = gr.Timer(PLAY_SECONDS, active=False)
        strips = gr.State(None)
        frames = gr.JSON(visible=False)
    return Stage(previous, at, following, play, leave, label, word, final, strip, timer, strips, frames)


def draw_stage(
    *, view: ExplainView | None, word: int | None, colormap: str, opacity: float, scale: str, strips: Filmstrip | None
) -> list:
    """The reel of the shown run and word, which the page's script steps through (the label too), and the
    filmstrip, drawn once without its outline (the script draws that): `Stage.drawn()`."""
    if view is None:
        return [NO_RUN, gr.skip(), gr.skip(), gr.skip()]
    kept = filmstrip_of(view, strips)
    settings = heatmap_settings(shown_word(view, word), colormap, opacity, scale)
    return [gr.skip(), kept.frames(), kept, reel(view, settings, kept)]


def switched(*, on: bool, view: ExplainView | None, step: int, chips: int | None, at: int, word: int | None) -> tuple:
    """Entering shows the tab's run at its `step` and word (`chips`); leaving gives the tab this screen's step (`at`)
    and `word` (the tab then redraws itself) and stops playing. Updates the tab's step, `at`, `word`, the final
    image, the tab's chips, the timer, ◀, ▶ and Play."""
    # Stop playing; ◀ ▶ and Play as they were, but for a one-step run (SD-Turbo): nothing to scrub.
    stopped = [gr.Timer(active=False), gr.skip(), gr.skip(), gr.Button("▶ Play")]
    if view is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *stopped
    steps = view.run.steps
    if not on:
        given = word if word is not None else gr.skip()
        return min(int(at), steps), gr.skip(), gr.skip(), gr.skip(), given, *stopped
    scrubbing = steps > 1  # and Gradio refuses a slider from 1 to 1
    slider = gr.Slider(minimum=1, maximum=max(steps, 2), value=min(int(step), steps), interactive=scrubbing)
    # Key n picks the n-th word; an empty prompt has none to pick (its maps are the start token's).
    choices = view.prompt_chips()
    chips_now = gr.Radio(choices=choices, value=shown_word(view, chips) if choices else None)
    buttons = [gr.Button(interactive=scrubbing), gr.Button(interactive=scrubbing)]
    buttons.append(gr.Button("▶ Play", interactive=scrubbing))
    return gr.skip(), slider, chips_now, view.image, gr.skip(), stopped[0], *buttons


def build(switch: gr.Checkbox, tab: Followed) -> None:
    """The presentation screen (hidden until `switch` is on) and its wiring to the Explain tab's run, step, word and
    heatmap settings. Entering takes the tab's step and word; leaving gives them back."""
    s = stage()
    quiet = {"show_progress": "hidden", "api_visibility": "private"}
    settings = {"view": tab.view, "word": s.word, "colormap": tab.colormap, "opacity": tab.opacity}
    settings |= {"scale": tab.normalisation, "strips": s.strips}
    draw_event = dict(fn=draw_stage, inputs_kwargs=settings, outputs=s.drawn(), **quiet)
    s.word.input(**draw_event)  # a pick; entering sets the word and draws once itself
    show_reel = f"(reel, at) => {{ window.sdplayReel = reel; return ({SHOW_JS})(at); }}"
    s.frames.change(None, [s.frames, s.at], None, js=show_reel, **quiet)
    s.at.change(None, s.at, None, js=SHOW_JS, **quiet)

    switch.change(None, switch, None, js=SWITCH_JS, queue=False, **quiet)
    both = {"on": switch, "view": tab.view, "step": tab.step, "chips": tab.chips, "at": s.at, "word": s.word}
    updated = [tab.step, s.at, s.word, s.final, tab.chips, s.timer, s.previous, s.following, s.play]
    entered = switch.change(switched, inputs_kwargs=both, outputs=updated, **quiet)
    entered.then(**draw_event)
    s.leave.click(None, None, switch, js="() => false", **quiet)
    s.previous.click(None, s.at, s.at, js=PREVIOUS_JS, **quiet)
    s.following.click(None, s.at, s.at, js=NEXT_JS, **quiet)
    s.play.click(play_or_pause, s.play, [s.timer, s.play], **quiet)
    s.timer.tick(next_step, [tab.view, s.at], s.at, **quiet)
    s.strip.select(jump, tab.view, s.at, **quiet)
