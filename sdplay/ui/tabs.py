"""The page's extension point: each tab is one `Tab` record (its id, label and `build`), and every `build` gets the
one `Page` the tabs share. sdplay/page.py lists the records in `TABS` and builds them in that order.

A tab offers what later tabs may use (`offer`/`part`, by tab id), lists the controls that a model load updates
(`follow_model`), and leaves wiring that needs tabs built after it for the end (`when_built`).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gradio as gr

from sdplay.runtime.models import LoadedModel, ModelManager, ModelSwitch
from sdplay.runtime.request import Limits, PlotLimits


class FollowsModel(Protocol):
    """Controls that take a newly loaded model's recommended settings (`ui.common.Controls` and its kin)."""

    def model_dependent(self) -> list[gr.components.Component]: ...

    def recommended(self, model: LoadedModel) -> dict[gr.components.Component, object]: ...


@dataclass
class Page:
    """What every tab's `build` gets: the model manager, the server's caps and model policy, and the parts the tabs
    share. `tabs` is the page's `gr.Tabs` (to open another tab); `one_job_per_session` names the queues that let a
    session hold one job at a time (the GPU's is always one)."""

    manager: ModelManager
    limits: Limits
    switch: ModelSwitch
    plot_limits: PlotLimits = PlotLimits()
    tabs: gr.Tabs | None = None
    parts: dict[str, Any] = field(default_factory=dict)
    following: list[FollowsModel] = field(default_factory=list)
    finishing: list[Callable[[], None]] = field(default_factory=list)
    one_job_per_session: list[str] = field(default_factory=list)

    def offer(self, tab_id: str, parts: Any) -> None:
        """Make `parts` (a tab's controls, its image input ...) available to the tabs built after it."""
        self.parts[tab_id] = parts

    def part(self, tab_id: str) -> Any:
        """What tab `tab_id` offered: it must come earlier in `TABS` (or be asked for in `when_built`)."""
        if tab_id not in self.parts:
            raise LookupError(f"Tab {tab_id!r} offers nothing yet: is it built before the tab that asks for it?")
        return self.parts[tab_id]

    def follow_model(self, controls: FollowsModel) -> None:
        """Apply each newly loaded model's recommended settings and examples to `controls`."""
        self.following.append(controls)

    def when_built(self, wiring: Callable[[], None]) -> None:
        """Run `wiring` once every tab is built (inside the page's Blocks, outside any tab)."""
        self.finishing.append(wiring)


@dataclass(frozen=True)
class Tab:
    """One tab of the page: `build(page)` lays it out and wires its events, inside its `gr.Tab`."""

    id: str
    label: str
    build: Callable[[Page], None]
