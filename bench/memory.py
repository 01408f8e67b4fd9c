"""Memory: do the three task views share one copy of the weights, and does switching models give memory back?

Run `python bench/memory.py`; it needs overhead.py's cached SD 1.5-architecture folder (built on first use).
"""

import gc
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from overhead import sd15_folder  # noqa: E402

from sdplay.runtime.composition import local_manager
from sdplay.runtime.generate import generate  # noqa: E402
from sdplay.runtime.models import ModelManager, shared_weight_ratio  # noqa: E402
from sdplay.runtime.random_models import SD15_SCHEDULER, tiny_pipeline  # noqa: E402
from sdplay.runtime.request import GenerationRequest, Task  # noqa: E402
from sdplay.runtime.tokenizer import build_clip_tokenizer  # noqa: E402

# Configuration
SWITCHES = 10
SWITCH_BAR_MB = 50.0
SHARING_BAR = 1.00
MEDIUM_WIDTHS = (32, 64, 128, 128)  # UNet and VAE block widths of the ~70 MB models; SD 1.5 has (320, 640, 1280, 1280)


@dataclass(frozen=True)
class Sharing:
    model: str
    ratio: float  # shared_weight_ratio(manager)
    one_view_bytes: int
    unique_bytes: int  # distinct parameter storage over the three views, counted here independently
    rss_growth_bytes: int  # resident memory added by building and holding the three views


@dataclass(frozen=True)
class Switching:
    models: str
    model_bytes: tuple[int, int]
    rss: list[int]  # after the first load, then after each switch
    unets_alive: int  # UNet objects the garbage collector still tracks after the switches: 1 unless one leaked

    @property
    def growth_mb(self) -> float:
        return (self.rss[-1] - self.rss[0]) / 2**20


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def medium_pipeline(folder: Path, seed: int) -> Path:
    """A ~70 MB random pipeline with SD 1.5's block layout at a tenth of its widths: big enough for a leak to show."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(folder / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(
            block_out_channels=MEDIUM_WIDTHS,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=256,
        ),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(sample_size=32, block_out_channels=MEDIUM_WIDTHS, cross_attention_dim=256),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def parameter_storage(pipe: StableDiffusionPipeline) -> dict[int, int]:
    """Bytes of each parameter tensor of `pipe`, keyed by where its data lives."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return {p.data_ptr(): p.numel() * p.element_size() for m in modules for p in m.parameters()}


def sharing(name: str, folder: Path) -> Sharing:
    manager = local_manager("cpu")
    manager.load(str(folder))
    before = rss()
    views = [manager.pipeline(task, "Euler") for task in Task]
    grown = rss() - before
    storages = [parameter_storage(view) for view in views]
    unique = {ptr: size for storage in storages for ptr, size in storage.items()}
    return Sharing(name, shared_weight_ratio(manager), sum(storages[0].values()), sum(unique.values()), grown)


def load_and_generate(manager: ModelManager, folder: Path) -> int:
    """Load `folder` and make one small image, as a user would after switching; returns the model's weight bytes.

    diffusers maps fp32 safetensors into memory and reads each page on first use: without a generation, a leaked
    model would hardly show in RSS.
    """
    model = manager.load(str(folder))
    generate(manager, GenerationRequest(prompt="a red cat", sampler="Euler", steps=1, seed=0, width=64, height=64))
    return model.parameter_bytes


def switching(name: str, first: Path, second: Path) -> Switching:
    manager = local_manager("cpu")
    sizes = [load_and_generate(manager, first)]
    memory = [rss()]
    for switch in range(SWITCHES):
        sizes.append(load_and_generate(manager, second if switch % 2 == 0 else first))
        memory.append(rss())
    unets = sum(type(obj) is UNet2DConditionModel for obj in gc.get_objects())
    return Switching(name, (sizes[0], sizes[1]), memory, unets)


def table(shares: list[Sharing], switches: list[Switching]) -> str:
    mb = 2**20
    rows = [
        "Memory sharing: unique parameter bytes over the txt2img, img2img and inpaint views, over one view's.",
        "",
        "| model | `shared_weight_ratio` | one view | unique over 3 views | RSS added by the 3 views | bar 1.00 |",
        "|---|---|---|---|---|---|",
    ]
    for s in shares:
        verdict = "met" if s.ratio == SHARING_BAR and s.unique_bytes == s.one_view_bytes else "MISSED"
        rows.append(
            f"| {s.model} | {s.ratio:.2f} | {s.one_view_bytes:,} B ({s.one_view_bytes / mb:.1f} MB) "
            f"| {s.unique_bytes:,} B | {s.rss_growth_bytes / mb:+.1f} MB | {verdict} |"
        )
    rows += [
        "",
        f"Model switch: RSS after the first load, then after {SWITCHES} loads alternating between two models "
        "in one ModelManager (CPU); every load is followed by one 64×64, 1-step image, so that the weights are "
        "really read into memory.",
        "",
        f"| models | weights each | RSS after first load | after {SWITCHES} switches | growth | "
        f"median growth per switch | UNets alive after | bar ≤ {SWITCH_BAR_MB:.0f} MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in switches:
        steps = [(b - a) / mb for a, b in zip(w.rss, w.rss[1:], strict=False)]
        verdict = "met" if w.growth_mb <= SWITCH_BAR_MB else "MISSED"
        rows.append(
            f"| {w.models} | {w.model_bytes[0] / mb:.1f} / {w.model_bytes[1] / mb:.1f} MB | {w.rss[0] / mb:.0f} MB "
            f"| {w.rss[-1] / mb:.0f} MB | {w.growth_mb:+.1f} MB | {statistics.median(steps):+.1f} MB | {w.unets_alive} "
            f"| {verdict} |"
        )
    for w in switches:
        rows.append(f"\nRSS trace, {w.models} (MB): {', '.join(f'{r / mb:.0f}' for r in w.rss)}")
    return "\n".join(rows)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sdplay-bench-") as tmp:
        folders = {
            "tiny A": tiny_pipeline(Path(tmp) / "tiny-a", seed=0),
            "tiny B": tiny_pipeline(Path(tmp) / "tiny-b", seed=1),
            "medium A": medium_pipeline(Path(tmp) / "medium-a", seed=0),
            "medium B": medium_pipeline(Path(tmp) / "medium-b", seed=1),
        }
        # Switching first, while the process has never held the 4 GB model, so its RSS is not in the picture.
        switches = [
            switching("tiny A ↔ tiny B", folders["tiny A"], folders["tiny B"]),
            switching("medium A ↔ medium B", folders["medium A"], folders["medium B"]),
        ]
        shares = [sharing("tiny", folders["tiny A"]), sharing("SD 1.5 architecture", sd15_folder())]
    report = table(shares, switches)
    print(report)
    results.write_section("Memory", report)


if __name__ == "__main__":
    main()
