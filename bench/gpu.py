"""The benchmark to run whenever a CUDA GPU is at hand: overhead.py's measurement in fp16 at 512×512, 20 steps.

Run `python bench/gpu.py` on a CUDA machine (about 2–4 minutes, most of it building the random SD 1.5 once).
"""

import statistics
import sys
import time

import results
import torch
from overhead import Settings, load, measure, sd15_folder, table

# Configuration
SETTINGS = Settings(device="cuda", dtype="float16", size=512, steps=20, pairs=5)
BUDGET = 300.0  # seconds the whole script should stay under


def main() -> None:
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        sys.exit(
            f"bench/gpu.py needs a CUDA GPU, and PyTorch sees none here (torch {torch.__version__}, {build}). "
            "Run it on a machine with an NVIDIA GPU; on the CPU use bench/overhead.py."
        )
    start = time.perf_counter()
    manager, plain = load(sd15_folder(), SETTINGS)
    measurement = measure(manager, plain, SETTINGS)
    total = time.perf_counter() - start
    ours, theirs = statistics.median(measurement.ours), statistics.median(measurement.plain)
    report = "\n".join(
        [
            table(measurement),
            f"- Seconds per image: ours {ours:.3f} s ({SETTINGS.steps / ours:.1f} steps/s), "
            f"plain {theirs:.3f} s ({SETTINGS.steps / theirs:.1f} steps/s); "
            f"peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (both pipelines loaded)",
            f"- Whole script: {total:.0f} s (budget {BUDGET:.0f} s: {'met' if total <= BUDGET else 'MISSED'})",
        ]
    )
    print(report)
    results.write_section(f"GPU ({torch.cuda.get_device_name()})", report)


if __name__ == "__main__":
    main()
