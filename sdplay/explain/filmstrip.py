"""The x̂₀ filmstrip: every step's predicted image x̂₀ in one row, the shown step outlined.

One picture that shows how a diffusion model works: coarse layout first, details last. Plain PIL on `ExplainView`.
"""

from dataclasses import dataclass

from PIL import Image, ImageDraw

from sdplay.explain.render import CHOSEN_COLOUR, ExplainView

# The strip is shown shrunk to the page's width, so its frames only need to be as large as a wide screen shows them
# (a long run's frames are smaller: the strip's width, and so its encoding time, stays bounded).
STRIP_WIDTH = 1600  # pixels, at most (but frames are never smaller than MIN_FRAME)
MAX_FRAME, MIN_FRAME = 96, 16  # a frame's height in pixels
BORDER = 4  # pixels around each frame: the shown step's border is the highlight
BACKGROUND = (40, 40, 40)


@dataclass(frozen=True)
class StripLayout:
    """Where each step's frame lies in the strip: cells of `cell` pixels side by side, each a frame inside a border."""

    steps: int
    frame: tuple[int, int]  # width, height

    @property
    def cell(self) -> tuple[int, int]:
        return self.frame[0] + 2 * BORDER, self.frame[1] + 2 * BORDER

    @property
    def size(self) -> tuple[int, int]:
        return self.steps * self.cell[0], self.cell[1]

    def box(self, step: int) -> tuple[int, int, int, int]:
        """The frame of a 0-based step: (left, top, right, bottom), right and bottom excluded."""
        left = step * self.cell[0] + BORDER
        return left, BORDER, left + self.frame[0], BORDER + self.frame[1]

    def step_at(self, x: float) -> int:
        """The 0-based step whose cell holds the strip's column `x` (a click), clamped to the run."""
        return min(max(int(x // self.cell[0]), 0), self.steps - 1)


def strip_layout(view: ExplainView) -> StripLayout:
    """Frames keep the panels' aspect ratio; their height shrinks with the number of steps."""
    width, height = view.size
    steps = view.run.steps
    frame_height = min(MAX_FRAME, max(MIN_FRAME, round(STRIP_WIDTH / steps * height / width)))
    return StripLayout(steps, (max(1, round(frame_height * width / height)), frame_height))


class Filmstrip:
    """The filmstrip of one view, its frames drawn once (again only when more steps are decoded): a step change
    then only moves the outline, which keeps scrubbing fast on long runs."""

    def __init__(self, view: ExplainView) -> None:
        self.view = view
        self.layout = strip_layout(view)
        self._frames: Image.Image | None = None
        self._decoded: frozenset[int] = frozenset()

    def frames(self) -> Image.Image:
        """Every step's x̂₀ (as `view.x0` shows it: VAE-decoded where it was, else the preview) side by side."""
        if self._frames is None or self.view.decoded_steps != self._decoded:
            self._decoded = self.view.decoded_steps
            strip = Image.new("RGB", self.layout.size, BACKGROUND)
            for s in range(self.layout.steps):
                strip.paste(
                    self.view.x0(s).resize(self.layout.frame, Image.Resampling.BILINEAR), self.layout.box(s)[:2]
                )
            self._frames = strip
        return self._frames

    def draw(self, step: int) -> Image.Image:
        """The strip with the 0-based `step` framed in the highlight colour."""
        strip = self.frames().copy()
        left, top, right, bottom = self.layout.box(step)
        ImageDraw.Draw(strip).rectangle(
            [left - BORDER, top - BORDER, right + BORDER - 1, bottom + BORDER - 1], outline=CHOSEN_COLOUR, width=BORDER
        )
        return strip


def filmstrip(view: ExplainView, step: int) -> Image.Image:
    """The filmstrip of `view` at the 0-based `step`, drawn from scratch (a `Filmstrip` keeps its frames)."""
    return Filmstrip(view).draw(step)
