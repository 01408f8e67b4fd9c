"""Where a model manager gets its executor: the one place that builds both and hands the executor to the manager.

The manager never builds an executor and an executor never builds a manager: app.py, a Ray replica, a notebook and
the tests compose them here.
"""

import os

import torch

from sdplay.runtime.executor import Executor, zero_gpu
from sdplay.runtime.models import MemoryOptions, ModelManager, pick_device


def default_jobs(device: torch.device) -> int:
    """Two jobs at once on a CPU of two cores or more, each on half the torch threads: for 30 students on the bundled
    model, 212 images a minute against 161 one job at a time, p95 7.3 s against 9.9 (bench/RESULTS.md, issue 21).
    One on a GPU, which one job fills by itself."""
    return 2 if device.type == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def local_manager(
    device: str | None = None,
    dtype: str | None = None,
    offline: bool = False,
    memory: MemoryOptions = MemoryOptions(),
    jobs: int | None = 1,
) -> ModelManager:
    """A model manager whose jobs run in this process, `jobs` at once on its job threads (None: `default_jobs`; on a
    ZeroGPU Space, one at a time in the Space's GPU worker, which `spaces.GPU` wraps around the same boundary)."""
    spaces = zero_gpu()
    jobs = 1 if spaces else jobs or default_jobs(pick_device(device))
    manager = ModelManager(device, dtype, offline=offline, memory=memory, jobs=jobs)
    manager.executor = Executor(manager, gpu=spaces.GPU if spaces else None)
    return manager
