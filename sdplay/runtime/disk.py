"""A byte cap on the files a server keeps for its users (uploads, result images, Explain exports): over the cap, the
oldest go first, never one still in use. Plain functions on a folder; sdplay/ui/cache.py applies them to Gradio's.
"""

import logging
import os
import re
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_DISK = "2GB"
# A file younger than this is on its way: a result that a page or client is about to fetch, an upload about to be
# used by the job it was sent for. The cap can be passed by what was written in that time.
GRACE_S = 10.0
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
UNITS |= {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*")
log = logging.getLogger(__name__)


def parse_size(text: str) -> int:
    """Bytes from a size as people write it: "2GB", "500 MB", "1.5G", "64MiB", "1000000" (decimal units, like
    disks are sold; KiB/MiB/GiB are binary)."""
    match = SIZE.fullmatch(text)
    unit = match and UNITS.get(match.group(2).upper())
    if not unit:
        raise ValueError(f"{text!r} is not a size: write it like 2GB, 500MB or 64MiB.")
    size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ValueError(f"{text!r} is not a size above zero.")
    return size


def megabytes(size: int) -> str:
    return f"{size / 10**6:.1f} MB"


@dataclass
class Cleaning:
    """What one pass of `cap_folder` found and did."""

    bytes_before: int  # the files' total size before the pass
    bytes_after: int  # and after it
    deleted: list[str] = field(default_factory=list)  # their paths


def cached_files(root: str | Path) -> list[tuple[float, str, int]]:
    """(modification time, path, size) of each regular file under `root`; links are neither followed nor counted."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:  # deleted meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((info.st_mtime, path, info.st_size))
    return found


def folder_size(root: str | Path) -> int:
    """Bytes of the regular files under `root` (what `cap_folder` keeps under its cap)."""
    return sum(size for _, _, size in cached_files(root))


def cap_folder(
    root: str | Path,
    max_bytes: int,
    in_use: Collection[str | Path] = (),
    grace_s: float = GRACE_S,
    now: float | None = None,
) -> Cleaning:
    """Delete the oldest files under `root` (by modification time) until their total size is at most `max_bytes`;
    never one in `in_use`, nor one modified in the last `grace_s` seconds. The folder a deleted file leaves empty
    is removed too (`root` itself stays).
    """
    root = os.path.abspath(root)
    now = time.time() if now is None else now
    found = cached_files(root)
    total = sum(size for _, _, size in found)
    cleaning = Cleaning(total, total)
    kept = {os.path.abspath(path) for path in in_use}
    for modified, path, size in sorted(found):
        if cleaning.bytes_after <= max_bytes:
            break
        if path in kept or now - modified < grace_s:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # deleted meanwhile: freed all the same
        except OSError as error:
            log.warning("sdplay: could not delete %s from the cache: %s", Path(path).name, error)
            continue
        cleaning.bytes_after -= size
        cleaning.deleted.append(path)
        _remove_if_empty(os.path.dirname(path), root)
    return cleaning


def _remove_if_empty(folder: str, root: str) -> None:
    """Gradio keeps each file in a folder of its own (named by the content's hash): without removing the emptied
    folders, a long-running server would pile up one per file it ever wrote.

    Gradio could reuse the folder for the same content between its mkdir and its write; the window is microseconds
    and costs that one result, against an unbounded pile of folders.
    """
    if folder == root:
        return
    try:
        os.rmdir(folder)
    except OSError:  # not empty, or gone
        pass
