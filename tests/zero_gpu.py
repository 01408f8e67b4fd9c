"""A stand-in for ZeroGPU's `spaces.GPU`: a forked worker per call, everything pickled both ways.

ZeroGPU (`spaces.GPU`) runs the decorated function in a process forked from the server, pickles its arguments into
it and every item it yields back out, and stops a generator when its consumer stops iterating. `ZeroGPU` does the
same with multiprocessing's "fork" context and explicit `pickle.dumps`, so that whatever would not cross the real
boundary fails the tests that run jobs through it.
"""

import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass

import torch

FORK = multiprocessing.get_context("fork")
TIMEOUT = 60  # seconds the parent waits for the worker's next message before the test fails


class NotPicklable(Exception):
    """Something that would have to cross ZeroGPU's boundary does not pickle."""


class ZeroGPU:
    """Stands in for `spaces.GPU`: `ZeroGPU(duration=f)(task)` runs generator `task` in a forked worker per call.

    It records the durations asked for, and every item the worker sent (also those the consumer never took).
    """

    def __init__(self) -> None:
        self.durations: list[int] = []
        self.sent: list[object] = []
        self.workers: list[multiprocessing.Process] = []

    def __call__(self, duration: Callable[..., int]) -> Callable[[Callable], Callable]:
        def decorate(task: Callable[..., Iterator]) -> Callable[..., Iterator]:
            def handler(*args, **kwargs) -> Iterator:
                self.durations.append(duration(*args, **kwargs))
                try:
                    payload = pickle.dumps((args, kwargs))
                except Exception as error:
                    raise NotPicklable(f"the arguments: {error}") from error
                receiver, sender = FORK.Pipe(duplex=False)
                stop = FORK.Event()
                worker = FORK.Process(target=_work, args=(task, payload, sender, stop), daemon=True)
                worker.start()
                sender.close()
                self.workers.append(worker)
                yield from self._receive(receiver, stop, worker)

            return handler

        return decorate

    def _receive(self, receiver, stop, worker: multiprocessing.Process) -> Iterator:
        ended = False
        try:
            while not ended:
                kind, value = self._next(receiver)
                ended = kind in ("end", "error")  # the worker sends nothing after either
                if kind == "error":
                    raise value
                if kind == "item":
                    yield value
        finally:  # the consumer stopped iterating (GeneratorExit) or the job ended: as ZeroGPU, signal the worker
            stop.set()
            while not ended:  # take what it still sends until it ends, so that it is never blocked on a full pipe
                kind, _ = self._next(receiver)
                ended = kind in ("end", "error")
            worker.join(TIMEOUT)
            receiver.close()

    def _next(self, receiver) -> tuple[str, object]:
        if not receiver.poll(TIMEOUT):
            raise TimeoutError("the worker sent nothing for a minute")
        kind, value = pickle.loads(receiver.recv_bytes())
        if kind == "item":
            self.sent.append(value)
            assert all(t.device.type == "cpu" for t in tensors_in(value)), "a tensor left the worker on the GPU"
        return kind, value


def _work(task: Callable[..., Iterator], payload: bytes, sender, stop) -> None:
    """The forked worker: unpickle the arguments, run the generator, pickle each item back; as ZeroGPU, close the
    generator at its next item once the consumer has stopped."""
    args, kwargs = pickle.loads(payload)
    items = task(*args, **kwargs)
    try:
        for item in items:
            if stop.is_set():
                items.close()
                break
            try:
                message = pickle.dumps(("item", item))
            except Exception as error:
                message = pickle.dumps(("error", NotPicklable(f"{type(item).__name__}: {error}")))
                sender.send_bytes(message)
                return
            sender.send_bytes(message)
    except Exception as error:  # ZeroGPU passes only gr.Error through; the executor must not rely on more
        sender.send_bytes(pickle.dumps(("error", RuntimeError(f"ZeroGPU worker error: {type(error).__name__}"))))
        return
    sender.send_bytes(pickle.dumps(("end", None)))


def tensors_in(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif is_dataclass(value) and not isinstance(value, type):
        for field in fields(value):
            yield from tensors_in(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from tensors_in(item)
