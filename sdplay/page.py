"""The whole app: the model bar on top, then one tab per entry of `TABS`, each built with the page they share.

`build_demo()` returns a queued `gr.Blocks`; app.py launches it. Adding a tab is its module (a `TAB` record, see
sdplay/ui/tabs.py) and one line in `TABS`.
"""

import gradio as gr

from sdplay.compare import ui as compare
from sdplay.explain import ui as explain
from sdplay.generation import img2img, inpaint, pnginfo, txt2img
from sdplay.inside import ui as inside
from sdplay.lesson import ui as lesson
from sdplay.runtime.downloads import DownloadProgress
from sdplay.runtime.errors import UserError
from sdplay.runtime.models import LoadedModel, ModelManager, ModelSwitch, SwitchPolicy
from sdplay.runtime.queue_log import QueueLog
from sdplay.runtime.request import Limits, PlotLimits
from sdplay.ui.common import GPU, from_web_page, user_errors, without_paths
from sdplay.ui.fair_share import one_job_per_session, queued_jobs
from sdplay.ui.tabs import FollowsModel, Page, Tab
from sdplay.xyz import ui as xyz

# The tabs, in the page's order. A tab may use what the tabs before it offer (Inside: Explain's run).
TABS: list[Tab] = [
    txt2img.TAB, img2img.TAB, inpaint.TAB, xyz.TAB, explain.TAB, inside.TAB, lesson.TAB, compare.TAB, pnginfo.TAB,
]  # fmt: skip


def model_notes(model: LoadedModel) -> str:
    """What the UI says about the loaded model: its recommended settings, and the words it knows if it is closed."""
    settings = model.settings
    lines = [f"**Recommended for {model.name}** (applied on load): {settings.summary(model.native_size)}"]
    if settings.fast is not None:
        lines[0] += (
            f"; the generation tabs start on its {settings.fast.steps}-step distilled UNet: "
            f"{settings.generation.summary(model.native_size)}"
        )
    if settings.note:
        lines.append(settings.note)
    if settings.vocabulary:
        lines.append(f"It knows only these {len(settings.vocabulary)} words: *{', '.join(settings.vocabulary)}*.")
    return "  \n".join(lines)


def switch_info(switch: ModelSwitch) -> str:
    """What the model box says about switching models on this server."""
    if not switch.open:
        return "This server serves this model only."
    if switch.policy == SwitchPolicy.CATALOG:
        offer = "The models this server offers."
    else:
        offer = "A Hub id (org/name) downloads on first use; local models are set with --model."
    who = "Only the admin may switch models, for everyone." if switch.admin else "Loading one changes it for everyone."
    return f"{offer} {who}"


def model_bar(
    demo: gr.Blocks, manager: ModelManager, switch: ModelSwitch, tabs: list[FollowsModel], log: QueueLog
) -> None:
    """Pick and load a model, as `switch` allows; loading refreshes the status line and applies the model's
    recommended settings and examples to every tab. A failed load changes nothing on the page and says why.
    A Hub model's download shows its bytes over the status line (reported by the manager on the handler's own
    thread: Gradio's track_tqdm would not see huggingface_hub's bars, which move on other threads).

    The model is everyone's: the status line says who switched it and when, and pages show the current model when
    they open and its status line every half minute (every second while it loads at start-up).
    """
    built_for = manager.model
    with gr.Row():
        choice = gr.Dropdown(
            list(switch.models), value=built_for.name, label="Model", scale=4, info=switch_info(switch),
            allow_custom_value=switch.policy == SwitchPolicy.ANY, interactive=switch.open,
        )  # fmt: skip
        load = gr.Button("Load", scale=1, visible=switch.open)
    status = gr.Markdown(manager.status(), elem_classes="status")
    queue_panel(demo, switch, log)
    notes = gr.Markdown(model_notes(built_for), elem_classes="model-notes")

    def applied(model: LoadedModel) -> dict:
        # gr.update, not gr.Dropdown(value=...): a new Dropdown warns that its value is not among its (no) choices.
        updates = {choice: gr.update(value=model.name), status: manager.status(), notes: model_notes(model)}
        for controls in tabs:
            updates |= controls.recommended(model)
        return updates

    def load_model(name: str | None, request: gr.Request, progress=gr.Progress()) -> dict:
        def downloading(report: DownloadProgress) -> None:
            progress(report.fraction, desc=report.describe())

        with user_errors():
            try:
                source, allow_local = switch.source(name or "", request.username)
                by = request.username or "a visitor"
                model = manager.load(source, allow_local=allow_local, by=by, progress=downloading)
            except UserError as error:
                if not from_web_page(request):  # a script hears no warning: refuse with an error
                    raise gr.Error(f"The model was not loaded: {error}") from error
                gr.Warning(without_paths(str(error)), title="The model was not loaded")
                return {choice: gr.update(value=manager.model.name), status: manager.status()}
        gr.Info(f"Loaded {model.name}.")
        return applied(model)

    def opened() -> dict:
        """A page opening after a switch shows the model now loaded, with its settings."""
        model = manager.model
        return {status: manager.status()} if model is built_for else applied(model)

    outputs = [choice, status, notes, *(component for c in tabs for component in c.model_dependent())]
    load.click(load_model, choice, outputs, api_visibility="private", show_progress_on=[status], **GPU)
    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}  # not in the GPU queue
    demo.load(opened, None, outputs, **quiet)
    gr.Timer(30).tick(manager.status, None, status, **quiet)
    # While the start-up model loads in the background, the status line says so and follows it every second.
    loading = gr.Timer(1, active=manager.loading)
    loading.tick(lambda: (manager.status(), gr.Timer(active=manager.loading)), None, [status, loading], **quiet)


def queue_panel(demo: gr.Blocks, switch: ModelSwitch, log: QueueLog) -> None:
    """A line for the admin (`--admin`) only, under the status line, refreshed every 2 s: the GPU queue's jobs per
    minute, jobs waiting and p95 wait over the last minute. Other pages have it hidden and its timer off."""
    panel = gr.Markdown(visible=False, elem_classes="status queue-panel")
    ticking = gr.Timer(2, active=False)

    def is_admin(request: gr.Request) -> bool:
        return switch.admin is not None and request.username == switch.admin

    def summary() -> str:
        waiting = [job for job in queued_jobs(demo) if job.concurrency_id == GPU["concurrency_id"] and not job.running]
        return log.summary(len(waiting)).describe()

    def shown_to_admin(request: gr.Request) -> dict:
        admin = is_admin(request)
        return {panel: gr.Markdown(summary() if admin else "", visible=admin), ticking: gr.Timer(active=admin)}

    def refreshed(request: gr.Request) -> str:
        return summary() if is_admin(request) else gr.skip()

    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    demo.load(shown_to_admin, None, [panel, ticking], **quiet)
    ticking.tick(refreshed, None, panel, **quiet)


def build_demo(
    manager: ModelManager,
    limits: Limits,
    switch: ModelSwitch,
    *,
    plot_limits: PlotLimits = PlotLimits(),
    workers: int = 1,
    tabs: list[Tab] = TABS,
) -> gr.Blocks:
    """The app; `workers` is how many jobs the executor runs at once (`manager.executor.workers`: 1 here, a Ray
    pool's replicas), and so how many the GPU queue lets run."""
    page = Page(manager, limits, switch, plot_limits, one_job_per_session=[GPU["concurrency_id"]])
    log = QueueLog()  # the GPU queue's last minute, for the admin's panel
    with gr.Blocks(title="sdplay", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# sdplay · a Stable Diffusion playground")
        model_slot = gr.Column()
        with gr.Tabs() as page.tabs:
            for tab in tabs:
                with gr.Tab(tab.label, id=tab.id):
                    tab.build(page)
        with model_slot:
            model_bar(demo, manager, switch, page.following, log)
        for wiring in page.finishing:
            wiring()
    share_gpu(demo, workers)
    demo.queue(api_open=False, max_size=32)
    for queue in page.one_job_per_session:  # so that one session cannot fill the queue of 32
        one_job_per_session(demo, queue, log if queue == GPU["concurrency_id"] else None)
    # Gradio's queue looks for new events every millisecond, also while a job runs: a thread of the job's process
    # waking 1000 times a second slowed generation on a CPU by ~6%. Every 10 ms is still instant to people.
    demo._queue.sleep_when_free = 0.01
    return demo


def share_gpu(demo: gr.Blocks, workers: int) -> None:
    """Let `workers` jobs of the GPU queue run at once: one per worker of the executor. Every event of the queue
    gets the same limit, since Gradio applies the lowest of a queue's events (the tabs declare `GPU`'s, one)."""
    for fn in demo.fns.values():
        if fn.concurrency_id == GPU["concurrency_id"]:
            fn.concurrency_limit = workers
