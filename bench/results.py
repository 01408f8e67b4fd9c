"""Shared by the benchmark scripts: describe the machine and its load, and replace one section of bench/RESULTS.md.

Each script owns one "## Title" section; every other section (other scripts', other people's) is kept as it is.
"""

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import diffusers
import psutil
import torch

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
ROOT = RESULTS.parent.parent
TITLE = "# Benchmark results\n\n"


def machine() -> str:
    """CPU model and cores, RAM, and the GPU when PyTorch sees one."""
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else None
    cpu = found.group(1).strip() if found else platform.processor() or platform.machine()
    line = f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name()}"
    return line


def versions() -> str:
    return f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}"


def command() -> str:
    """The command line that ran this script, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def cpu_load(seconds: float = 1.0) -> str:
    """Load average and the other processes keeping the CPU busy now, sampled over `seconds`."""
    processes = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid != os.getpid()]
    for process in processes:
        try:
            process.cpu_percent(None)
        except psutil.Error:
            pass
    times = psutil.cpu_times_percent(seconds)
    busy = []
    for process in processes:
        try:
            percent = process.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= 20:
            name = " ".join(process.info["cmdline"] or [])[:60] or f"pid {process.pid}"
            busy.append(f"`{name}` {percent:.0f}%")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    shares = f"idle {times.idle:.0f}%, steal {getattr(times, 'steal', 0.0):.0f}%"
    return f"load average (1, 5, 15 min) {load} on {os.cpu_count()} cores, {shares}; busy: {'; '.join(busy) or 'none'}"


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the "## `title`" section of `path` with the run's context and `body`."""
    context = [
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- Machine: {machine()}",
        f"- Versions: {versions()}",
        f"- Command: `{command()}`",
    ]
    section = f"## {title}\n\n" + "\n".join(context) + "\n\n" + body.strip() + "\n\n"
    text = path.read_text() if path.exists() else TITLE
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
