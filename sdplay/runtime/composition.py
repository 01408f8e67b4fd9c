"""Where a model manager gets its executor: the one place that builds both and hands the executor to the manager.

The manager never builds an executor and an executor never builds a manager: app.py, a Ray replica, a notebook and
the tests compose them here.
"""

from sdplay.runtime.executor import Executor, zero_gpu
from sdplay.runtime.models import MemoryOptions, ModelManager


def local_manager(
    device: str | None = None, dtype: str | None = None, offline: bool = False, memory: MemoryOptions = MemoryOptions()
) -> ModelManager:
    """A model manager whose jobs run in this process, one at a time on its job thread (on a ZeroGPU Space, in the
    Space's GPU worker, which `spaces.GPU` wraps around the same boundary)."""
    manager = ModelManager(device, dtype, offline=offline, memory=memory)
    spaces = zero_gpu()
    manager.executor = Executor(manager, gpu=spaces.GPU if spaces else None)
    return manager
