"""Gradio's cache folder under sdplay's byte cap (--max-disk): which files a queued job still needs, and a thread
that deletes the oldest of the others every few seconds when the folder passes the cap.

The whole folder counts, so it must be the app's own (app.py gives it one): Gradio's record of the files it wrote
(`Blocks.temp_file_sets`) misses every file of a component that a handler updated with gr.update or gr.skip, since
the session then gets a copy of the component with a record of its own; results are such files.
"""

import logging
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from sdplay.runtime.disk import Cleaning, cap_folder, megabytes
from sdplay.ui.fair_share import queued_jobs

# Often enough that a burst of jobs passes the cap only briefly; a pass costs one stat per file.
CLEAN_EVERY_S = 5.0
log = logging.getLogger(__name__)


def forget(demo: gr.Blocks, deleted: list[str]) -> None:
    """Take deleted files out of Gradio's record of the app's files (as its own `delete_cache` does), so that the
    record does not grow for as long as the server runs."""
    gone = set(deleted)
    for files in list(demo.temp_file_sets):
        files.difference_update(gone)  # one C call: safe while Gradio adds to the set from another thread


def file_paths(payload: Any) -> Iterator[str]:
    """The server paths of the files in an event's input payload (a file is a dict with a "path"; an image editor's
    value holds several)."""
    if isinstance(payload, dict):
        if isinstance(payload.get("path"), str):
            yield payload["path"]
        for value in payload.values():
            yield from file_paths(value)
    elif isinstance(payload, list | tuple):
        for value in payload:
            yield from file_paths(value)


def files_in_use(demo: gr.Blocks) -> set[str]:
    """Files that must stay: the inputs of the jobs waiting or running, and those a component keeps for good
    (`keep_in_cache`: its examples)."""
    used = {path for job in queued_jobs(demo) for path in file_paths(job.inputs)}
    for block in list(demo.blocks.values()):
        used.update(getattr(block, "keep_in_cache", ()))
    return used


class CacheCap:
    """Keeps `demo`'s cache folder (GRADIO_TEMP_DIR) under `max_bytes`, oldest files first, every `every_s` seconds
    on a thread of its own; see `sdplay.runtime.disk.cap_folder` for what is never deleted."""

    def __init__(self, demo: gr.Blocks, max_bytes: int, every_s: float = CLEAN_EVERY_S):
        self.demo, self.max_bytes, self.every_s = demo, max_bytes, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdplay-cache-cap", daemon=True)

    def clean(self) -> Cleaning:
        """One pass: delete the oldest files that are not in use until the folder fits under the cap."""
        cleaning = cap_folder(self.demo.GRADIO_CACHE, self.max_bytes, files_in_use(self.demo))
        forget(self.demo, cleaning.deleted)
        if cleaning.deleted:
            freed = cleaning.bytes_before - cleaning.bytes_after
            log.info("sdplay: deleted the %d oldest cached files (%s)", len(cleaning.deleted), megabytes(freed))
        if cleaning.bytes_after > self.max_bytes:
            log.warning(
                "sdplay: the cache holds %s, over --max-disk %s: the rest is in use or just written",
                megabytes(cleaning.bytes_after), megabytes(self.max_bytes),
            )  # fmt: skip
        return cleaning

    def start(self) -> "CacheCap":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.clean()
            except Exception:  # a bad pass must not end the cap for the rest of the server's life
                log.exception("sdplay: cleaning the cache failed")
