"""Classroom load test: students (threads, a gradio_client session each) use one `python app.py` at the same time.

The mix (default): each opens the page, runs 3 txt2img jobs and 1 Explain on the bundled model, and every
`--stop-every`th presses Stop on one of them; with `--hostile`, one more client sends the probe's attacks all along.
`--once`: each presses Generate once (txt2img), all at the same moment. Every image must have exactly the pixels of a
sequential run, and the p95 of submit → image must meet the mode's bar (issue 21).
Run `python bench/classroom.py [--students 30] [--hostile] [--stop-every 5] [--once]`.
"""

import argparse
import functools
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from gradio_client.utils import Status
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from handmade import edited, png_claiming_size, synthetic_run, write_safetensors  # noqa: E402 (as the tests build them)
from raw_api import Answer, call, positional  # noqa: E402
from startup import free_port, wait_for_page  # noqa: E402

from sdplay.explain import export  # noqa: E402

# Configuration
STUDENTS = 30
STOP_EVERY = 5  # students 1, 6, 11, ... press Stop on one of their jobs (0: nobody does)
MIXES = {  # each student's jobs, in order
    "mix": ("/txt2img", "/txt2img", "/explain", "/txt2img"),
    "once": ("/txt2img",),
}
P95_BARS = {"mix": 10.0, "once": 5.0}  # seconds, submit → image (issue 21)
# The bundled model's defaults: the generation tabs' fast path, and Explain's 20-step story (assets/shapes/sdplay.json).
GENERATION = {"sampler": "LCM", "schedule": "Automatic", "steps": 4, "guidance_scale": 4.0}
EXPLAIN = {"sampler": "DPM++ 2M", "schedule": "Uniform", "steps": 20, "guidance_scale": 4.0}
JOB = {"negative_prompt": "", "width": 64, "height": 64}
STOP_STEPS = 150  # the job a student stops (at Explain's settings): long enough for the Stop to land while it runs
STOPPED = rf"Stopped at step \d+ of {STOP_STEPS}"  # as sdplay says it to an API caller
SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray")
SHAPES = ("circle", "square", "triangle")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
POLL = 0.02  # seconds between a student's looks at its job's status: the error of the measured start
SAMPLE = 0.2  # seconds between samples of the app's memory and its Gradio temp folder
FLOOD = 12  # jobs the hostile client sends at once, from its one session and again without a session
START_TIMEOUT = 300.0  # seconds for the app to answer
JOB_TIMEOUT = 900.0  # seconds for one job, queue included: 30 students each wait for up to 29 others

# A job runs once gradio_client hears so (PROCESSING), or of its progress or output. A step has run once its progress
# says "Step k/n" (sdplay first says "Starting": a Stop then ends the job "before the first step"), or once it sends
# an output (an API caller gets an empty one for each step's previews).
RUNNING = {Status.PROCESSING, Status.PROGRESS, Status.ITERATING, Status.LOG}
STEPPED = re.compile(r"Step [1-9]\d*/")


@dataclass(frozen=True)
class Job:
    student: int
    number: int  # 0-3, in the order the student sends them
    endpoint: str  # "/txt2img" or "/explain"
    prompt: str
    seed: int
    stop: bool = False  # the student presses Stop while it runs

    def arguments(self) -> dict:
        settings = EXPLAIN if self.endpoint == "/explain" or self.stop else GENERATION
        steps = STOP_STEPS if self.stop else settings["steps"]
        return {**JOB, **settings, "prompt": self.prompt, "seed": self.seed, "steps": steps}


def prompt(rng: random.Random) -> str:
    """A prompt in the bundled model's grammar (assets/shapes/README.md): its words only, background ≠ shape."""
    colour, background = rng.sample(COLOURS, 2)
    return f"a {rng.choice(SIZES)} {colour} {rng.choice(SHAPES)} {rng.choice(PLACES)} on a {background} background"


def plan(students: int, stop_every: int, endpoints: tuple[str, ...]) -> list[list[Job]]:
    """Every student's jobs (`endpoints`), with prompts and seeds of their own. In the mix, every `stop_every`th
    student stops one job: its Explain, or (every other such student) its second txt2img."""
    plans = []
    for student in range(students):
        rng = random.Random(student)
        stopped = None
        if stop_every and student % stop_every == 0 and len(endpoints) > 2:
            stopped = 2 if (student // stop_every) % 2 == 0 else 1
        jobs = [
            Job(student, number, endpoint, prompt(rng), seed=1000 * student + number, stop=number == stopped)
            for number, endpoint in enumerate(endpoints)
        ]
        plans.append(jobs)
    return plans


@dataclass
class Outcome:
    """One job as its student saw it; times are `time.time()` seconds."""

    job: Job
    submitted: float
    started: float | None  # gradio_client heard that it runs (None: it never ran)
    ended: float  # the result was in, files downloaded, or the error
    pixels: np.ndarray | None = None
    error: str | None = None

    @property
    def wait(self) -> float | None:
        return None if self.started is None else self.started - self.submitted

    @property
    def run(self) -> float | None:
        return None if self.started is None else self.ended - self.started

    @property
    def end_to_end(self) -> float:
        return self.ended - self.submitted


def load_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def run_job(client: Client, job: Job, stop: Callable[[], None] | None = None) -> Outcome:
    """Submit `job` and watch it until it runs (pressing `stop` once a step has run), then wait for its result."""
    submitted = time.time()
    handle = client.submit(**job.arguments(), api_name=job.endpoint)
    started = None
    while not handle.done() and (started is None or stop is not None):
        status = handle.status()
        if started is None and status.code in RUNNING:
            started = status.time.timestamp()  # when gradio_client received the message, not when we looked
        progress = [unit.desc or "" for unit in status.progress_data or []]
        if stop is not None and (status.code == Status.ITERATING or any(map(STEPPED.match, progress))):
            stop()
            stop = None
        time.sleep(POLL)
    try:
        output = handle.result(timeout=JOB_TIMEOUT)
    except Exception as error:  # the app's refusal or error (AppError), or whatever else went wrong, as it is
        return Outcome(job, submitted, started, time.time(), error=f"{type(error).__name__}: {error}")
    ended = time.time()
    path = output[0][0]["image"] if job.endpoint == "/txt2img" else output[0]
    return Outcome(job, submitted, started, ended, pixels=load_pixels(path))


def stop_handlers(config: dict) -> dict[str, list[int]]:
    """Per tab ("txt2img", "explain", ...), the fn_index of its Stop button's click handlers, read from the page's
    public config as any script can."""
    components = {c["id"]: c for c in config["components"]}
    handlers: dict[str, list[int]] = {}

    def walk(node: dict, tab: str | None) -> None:
        component = components.get(node["id"], {})
        props = component.get("props", {})
        if component.get("type") == "tabitem":
            tab = props.get("id")
        if component.get("type") == "button" and props.get("value") == "Stop":
            clicks = [d["id"] for d in config["dependencies"] if [node["id"], "click"] in d["targets"]]
            handlers.setdefault(tab, []).extend(clicks)
        for child in node.get("children", []):
            walk(child, tab)

    walk(config["layout"], None)
    return handlers


def press_stop(url: str, fn_index: int, session_hash: str | None = None) -> int:
    """Press Stop as the page does (a raw POST outside the queue), as a session or without one: the HTTP status."""
    body = {"fn_index": fn_index, "data": [0]} | ({"session_hash": session_hash} if session_hash else {})
    return requests.post(f"{url}gradio_api/run/predict", json=body, timeout=60).status_code


@dataclass
class StudentRun:
    page: float  # seconds to open the page: GET the page and its config, as a browser's first load does
    outcomes: list[Outcome]


def student(
    url: str, jobs: list[Job], all_open: threading.Barrier, stops: dict[str, list[int]], downloads: str
) -> StudentRun:
    """Open the page (and a gradio_client session), wait until every student has, then run `jobs` in order."""
    opened = time.perf_counter()
    for path in ("", "config"):
        requests.get(url + path, timeout=120).raise_for_status()
    page = time.perf_counter() - opened
    client = Client(url, verbose=False, download_files=downloads, analytics_enabled=False)
    all_open.wait()
    outcomes = []
    for job in jobs:
        stop = functools.partial(press_stop, url, stops[job.endpoint.strip("/")][0], client.session_hash)
        outcomes.append(run_job(client, job, stop if job.stop else None))
        print(f"  {describe(outcomes[-1])}", flush=True)
    client.close()
    return StudentRun(page, outcomes)


def describe(outcome: Outcome) -> str:
    job = outcome.job
    wait = "never ran" if outcome.wait is None else f"wait {outcome.wait:6.2f} s"
    result = "an image" if outcome.pixels is not None else outcome.error
    return (
        f"student {job.student:2d} job {job.number} {job.endpoint:9s}{' (Stop)' if job.stop else '       '} "
        f"{wait}, end to end {outcome.end_to_end:6.2f} s: {result}"
    )


def sequential(url: str, plans: list[list[Job]], downloads: str) -> tuple[dict[tuple[int, int], np.ndarray], float]:
    """Every student's jobs (those not stopped) one after another from one client: the reference pixels, and the
    seconds it took."""
    client = Client(url, verbose=False, download_files=downloads, analytics_enabled=False)
    reference = {}
    start = time.perf_counter()
    for job in (job for jobs in plans for job in jobs if not job.stop):
        outcome = run_job(client, job)
        if outcome.pixels is None:
            raise RuntimeError(f"the sequential run failed: {describe(outcome)}")
        reference[job.student, job.number] = outcome.pixels
    client.close()
    return reference, time.perf_counter() - start


# The hostile client ---------------------------------------------------------------------------------------------


def upload(url: str, path: Path) -> dict:
    """The file sent as a page sends an upload: its server-side FileData for an event's inputs."""
    with path.open("rb") as f:
        response = requests.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}, timeout=120)
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}}


def hostile_files(folder: Path) -> dict[str, list[Path]]:
    """The probe's Explain replay files and corrupt images, by attack."""
    folder.mkdir(parents=True)
    metadata = export.read_header(export.save_run(synthetic_run(), folder / "run.safetensors"))["__metadata__"]
    empty = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    huge = {"__metadata__": metadata, **{f"t{i}": empty for i in range(120_000)}}  # ~8 MB of header
    wrong_types = [
        edited(export.save_run(synthetic_run(), folder / f"{name}.safetensors"), **{name: value})
        for name, value in (("tokens", "5"), ("recipe", "[]"), ("unet_calls", '"3"'), ("first_step", "{"))
    ]
    text = folder / "notes.png"
    text.write_text("a prompt, not a picture\n")
    bomb = folder / "bomb.png"
    bomb.write_bytes(png_claiming_size(20_000, 20_000))  # a 1×1 PNG whose header claims 400 MP
    return {
        "huge header": [Path(write_safetensors(folder / "huge.safetensors", huge))],
        "words": [export.save_run(synthetic_run(tokens=10_002), folder / "words.safetensors")],
        "latents": [export.save_run(synthetic_run(latent=(1, 260, 260)), folder / "latents.safetensors")],
        "wrong types": [Path(path) for path in wrong_types],
        "images": [text, bomb],
    }


@dataclass(frozen=True)
class Attack:
    name: str
    send: Callable[["Hostile"], list[Answer]]
    refusal: str | None  # what every refusal must say (a regex); None: it must not be refused
    accepted: int | None = 0  # accepted answers allowed per round; None: any


class Hostile:
    """One client sending the probe's attacks (as tests/test_api.py, test_explain.py and test_fair_share.py send
    them) in rounds: from a session of its own (a gradio_client Client, which the raw requests name too), and
    without a session."""

    def __init__(self, url: str, files: dict[str, list[Path]], downloads: str) -> None:
        self.url, self.files, self.downloads = url, files, downloads
        self.answers: dict[str, list[Answer]] = {attack.name: [] for attack in ATTACKS}
        self.rounds = 0

    def run(self, students_done: threading.Event) -> None:
        """Rounds of every attack, a Stop without a session after each, until the students are done (one at least)."""
        self.client = Client(self.url, verbose=False, download_files=self.downloads, analytics_enabled=False)
        config = requests.get(f"{self.url}config", timeout=60).json()
        self.stops = [index for handlers in stop_handlers(config).values() for index in handlers]
        model_box = next(c for c in config["components"] if c.get("props", {}).get("label") == "Model")
        self.listed_model = model_box["props"]["choices"][0][0]
        api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        self.parameters = {name: endpoint["parameters"] for name, endpoint in api.items()}
        stop, *others = ATTACKS
        while True:
            for attack in others:
                self.answers[attack.name] += self.send(attack)
                self.answers[stop.name] += self.send(stop)
            self.rounds += 1
            if students_done.is_set():
                break
        self.client.close()

    def send(self, attack: Attack) -> list[Answer]:
        try:
            return attack.send(self)
        except Exception as error:  # a broken connection, an upload refused, ...: an answer too, not the end
            return [Answer("failed", f"{type(error).__name__}: {error}")]

    @property
    def session(self) -> str:
        return self.client.session_hash

    def stop_without_session(self) -> list[Answer]:
        codes = [press_stop(self.url, fn_index) for fn_index in self.stops]
        return [Answer("failed" if code >= 500 else "accepted", f"HTTP {code}") for code in codes]

    def switch(self, name: str) -> list[Answer]:
        return [call(self.url, "load_model", [name], self.session), call(self.url, "load_model", [name], None)]

    def replay(self, files: str) -> list[Answer]:
        return [call(self.url, "replay", [upload(self.url, path)], self.session) for path in self.files[files]]

    def surrogate(self) -> list[Answer]:
        # A JSON escape of half a UTF-16 pair: gradio_client (httpx) cannot even encode it; a raw request can.
        return [
            call(
                self.url,
                name,
                positional(self.parameters[f"/{name}"], **JOB, **GENERATION, prompt="a \ud800 b"),
                self.session,
            )
            for name in ("txt2img", "explain")
        ]

    def corrupt_images(self) -> list[Answer]:
        text, bomb = self.files["images"]
        img2img = {**JOB, **GENERATION, "prompt": "a red circle"}
        answers = []
        for api_name, arguments, path in [
            ("/img2img", img2img, text),
            ("/img2img", img2img, bomb),
            ("/png_info", {}, text),
        ]:
            try:
                self.client.predict(**arguments, image=handle_file(str(path)), api_name=api_name)
                answers.append(Answer("accepted", "a result"))
            except AppError as error:
                answers.append(Answer("refused", str(error)))
        return answers

    def flood(self) -> list[Answer]:
        jobs = [
            self.client.submit(**JOB, **GENERATION, prompt="a red circle", seed=seed, api_name="/txt2img")
            for seed in range(FLOOD)
        ]
        answers = []
        for job in jobs:
            try:
                job.result(timeout=JOB_TIMEOUT)
                answers.append(Answer("accepted", "an image"))
            except (ValidationError, AppError) as error:
                answers.append(Answer("refused", str(error)))
        return answers

    def flood_without_session(self) -> list[Answer]:
        data = positional(self.parameters["/txt2img"], **JOB, **GENERATION, prompt="a red circle", seed=1)
        with ThreadPoolExecutor(FLOOD) as pool:
            return list(pool.map(lambda _: call(self.url, "txt2img", data, None), range(FLOOD)))


QUEUED = r"You already have a job|Requests without a session share one place"  # sdplay/ui/fair_share.py
# The first is sent after each of the others too, so that Stops without a session reach running jobs all along.
ATTACKS = [
    Attack("Stop without a session, every Stop handler (raw POST run/predict)", Hostile.stop_without_session, None,
           None),
    Attack("switch to a model not in the list (/call/load_model, with and without a session)",
           lambda h: h.switch("nobody/any-model"), "not in the list of choices"),
    Attack("a 5000-character model name", lambda h: h.switch("a" * 5000),
           r"not in the list of choices|not a model name \(5000 characters\)"),
    Attack("reload the serving model (listed, so --models catalog allows it)", lambda h: h.switch(h.listed_model),
           None, None),
    Attack("Explain replay: an 8 MB header of 120,000 tensors", lambda h: h.replay("huge header"),
           r"header is [\d,]+ bytes"),
    Attack("Explain replay: 10,000 one-token words", lambda h: h.replay("words"), r"tokens must list 2 to \d+ tokens"),
    Attack("Explain replay: 1024² latents (260×260)", lambda h: h.replay("latents"), r"up to \d+×\d+"),
    Attack("Explain replay: metadata of the wrong JSON type (4 files)", lambda h: h.replay("wrong types"),
           "is not a JSON (list|dict|int)|is not valid JSON"),
    Attack("lone surrogate in the prompt (/txt2img, /explain)", Hostile.surrogate, "invalid character at position 3"),
    Attack("corrupt uploads (/img2img: text, a 20000² PNG header; /png_info: text)", Hostile.corrupt_images,
           "not an image sdplay can read|too large|decompression bomb"),
    Attack(f"a flood of {FLOOD} jobs from one session", Hostile.flood, QUEUED, 1),
    Attack(f"a flood of {FLOOD} jobs without a session", Hostile.flood_without_session, QUEUED, 1),
]  # fmt: skip


# Serving and measuring ------------------------------------------------------------------------------------------


@contextmanager
def classroom_app(temp: Path, log: Path, jobs: int | None) -> Iterator[tuple[str, psutil.Process]]:
    """`python app.py --offline --models catalog` (the bundled model; `--jobs` if given) on a free port, its Gradio
    files in `temp`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPLAY_")} | {"GRADIO_TEMP_DIR": str(temp)}
    command = [sys.executable, "app.py", "--offline", "--port", str(port), "--models", "catalog"]
    command += ["--jobs", str(jobs)] if jobs else []
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=results.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            try:
                wait_for_page(url, process, START_TIMEOUT)
            except RuntimeError as error:
                raise RuntimeError(f"{error}:\n{log.read_text()[-3000:]}") from None
            yield url, psutil.Process(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of the process and all its children."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # a child that ended meanwhile
            pass
    return total


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds the process and its children have used."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def disk_used(folder: Path) -> int:
    """Bytes of disk the files under `folder` take (blocks, as `du` counts them)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:  # deleted meanwhile (Gradio's cache cleaner, sdplay's disk cap)
                pass
    return total


class Monitor:
    """Samples the app's memory and its Gradio temp folder every SAMPLE seconds, in a thread, until stopped."""

    def __init__(self, process: psutil.Process, folder: Path) -> None:
        self.process, self.folder = process, folder
        self.rss = [tree_rss(process)]
        self.disk = [disk_used(folder)]
        self.cpu = [tree_cpu(process), time.process_time()]  # the app's, this script's (its students and hostile)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE):
            self.rss.append(tree_rss(self.process))
            self.disk.append(disk_used(self.folder))

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.rss.append(tree_rss(self.process))
        self.disk.append(disk_used(self.folder))
        self.cpu = [tree_cpu(self.process) - self.cpu[0], time.process_time() - self.cpu[1]]


@dataclass
class Load:
    students: list[StudentRun]
    seconds: float  # from the moment every page was open until the last student had its last result
    reference: dict[tuple[int, int], np.ndarray]
    sequential_seconds: float
    rss: list[int]  # bytes, sampled: the first before the load, the last after
    disk: list[int]
    cpu: list[float]  # CPU seconds during the load: the app's, and this script's (the clients)
    still_serving: bool  # after the load, a fresh client gets the first student's first image again
    hostile: Hostile | None
    load_before: str
    load_after: str

    @property
    def outcomes(self) -> list[Outcome]:
        return [outcome for run in self.students for outcome in run.outcomes]

    def problems(self) -> list[str]:
        """What broke the rules: any job that is not its reference image, or (stopped) not "Stopped at step k"."""
        found = []
        for outcome in self.outcomes:
            job = outcome.job
            if job.stop:
                if outcome.pixels is not None or not _stopped(outcome.error):
                    found.append(f"stopped, but {describe(outcome)}")
            elif outcome.pixels is None:
                found.append(describe(outcome))
            elif not np.array_equal(outcome.pixels, self.reference[job.student, job.number]):
                found.append(f"{describe(outcome)} with other pixels than the sequential run")
        if not self.still_serving:
            found.append("after the load the app no longer served the first student's first image")
        return found


def _stopped(error: str | None) -> bool:
    return bool(error and re.search(STOPPED, error))


def measure(students: int, stop_every: int, hostile: bool, mix: str, jobs: int | None = None) -> Load:
    plans = plan(students, stop_every, MIXES[mix])
    with tempfile.TemporaryDirectory(prefix="sdplay-classroom-") as work:
        work = Path(work)
        temp, downloads = work / "gradio", work / "downloads"
        temp.mkdir()
        downloads.mkdir()
        with classroom_app(temp, work / "app.log", jobs) as (url, process):
            config = requests.get(f"{url}config", timeout=60).json()
            stops = stop_handlers(config)
            print(f"sequential reference: {sum(not j.stop for p in plans for j in p)} jobs, one client ...", flush=True)
            reference, sequential_seconds = sequential(url, plans, str(downloads))
            attacker = Hostile(url, hostile_files(work / "hostile"), str(downloads)) if hostile else None
            load_before = results.cpu_load()
            print(f"the load: {students} students{' and a hostile client' if hostile else ''} ...", flush=True)
            done, started = threading.Event(), []
            all_open = threading.Barrier(len(plans), action=lambda: started.append(time.perf_counter()))
            with Monitor(process, temp) as monitor, ThreadPoolExecutor(students + 1) as pool:
                futures = [pool.submit(student, url, jobs, all_open, stops, str(downloads)) for jobs in plans]
                attack = pool.submit(attacker.run, done) if attacker else None
                runs = [future.result() for future in futures]
                seconds = time.perf_counter() - started[0]
                done.set()
                if attack:
                    print("the students are done; the hostile client finishes its round ...", flush=True)
                    attack.result()
            load_after = results.cpu_load()
            first = next(job for job in plans[0] if not job.stop)
            check = Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
            again = run_job(check, first)
            check.close()
            still_serving = again.pixels is not None and np.array_equal(again.pixels, reference[0, first.number])
    return Load(
        runs, seconds, reference, sequential_seconds, monitor.rss, monitor.disk, monitor.cpu, still_serving, attacker,
        load_before, load_after,
    )  # fmt: skip


# Report ---------------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    """p50, p95 and max seconds, and the count, as four table cells."""
    if not values:
        return "– | – | – | 0"
    p50, p95 = np.percentile(values, [50, 95])
    return f"{p50:.2f} | {p95:.2f} | {max(values):.2f} | {len(values)}"


def mb(values: list[int]) -> str:
    return (
        f"{values[0] / 2**20:.0f} MB before, **{max(values) / 2**20:.0f} MB peak**, {values[-1] / 2**20:.0f} MB after"
    )


def leaks(message: str) -> bool:
    """Whether an answer names a server path: the repository's or one in the temporary folder."""
    return str(results.ROOT) in message or f"{tempfile.gettempdir()}/" in message


@dataclass(frozen=True)
class Verdict:
    """One attack's answers, counted."""

    attack: Attack
    answers: list[Answer]
    rounds: int

    def count(self, outcome: str) -> int:
        return sum(answer.outcome == outcome for answer in self.answers)

    @property
    def unexpected_refusals(self) -> list[Answer]:
        refusal = self.attack.refusal
        return [a for a in self.answers if a.outcome == "refused" and not (refusal and re.search(refusal, a.message))]

    @property
    def leaked(self) -> int:
        return sum(leaks(answer.message) for answer in self.answers)

    @property
    def fine(self) -> bool:
        allowed = self.attack.accepted
        within = allowed is None or self.count("accepted") <= allowed * max(self.rounds, 1)
        return within and self.count("failed") == 0 and not self.unexpected_refusals and self.leaked == 0


def verdicts(attacker: Hostile) -> list[Verdict]:
    return [Verdict(attack, attacker.answers[attack.name], attacker.rounds) for attack in ATTACKS]


def hostile_rows(attacker: Hostile) -> list[str]:
    rows = [
        "| attack | sent | refused | accepted | failed | refused otherwise | path in a message | as expected | "
        "a message |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts(attacker):
        odd = v.unexpected_refusals + [a for a in v.answers if a.outcome == "failed"]
        shown = (odd or [a for a in v.answers if a.outcome == "refused"] or v.answers or [Answer("", "")])[0].message
        shown = shown.replace("|", "\\|").replace("\n", " ")
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        rows.append(
            f"| {v.attack.name} | {len(v.answers)} | {v.count('refused')} | {v.count('accepted')} | "
            f"{v.count('failed')} | {len(v.unexpected_refusals)} | {v.leaked} | {'yes' if v.fine else '**NO**'} | "
            f"{shown} |"
        )
    return rows


def stoppers(stop_every: int) -> str:
    if stop_every == 1:
        return "Every student asks"
    return f"One student in {stop_every} (the 1st, the {stop_every + 1}th, ...) asks"


def table(m: Load, stop_every: int, mix: str) -> str:
    outcomes = m.outcomes
    images = [o for o in outcomes if o.pixels is not None]
    stopped = [o for o in outcomes if o.job.stop]
    finished = len(images) + sum(_stopped(o.error) for o in stopped)
    identical = sum(
        np.array_equal(o.pixels, m.reference[o.job.student, o.job.number]) for o in images if not o.job.stop
    )
    expected = len(m.reference)
    problems = m.problems()
    per_minute = 60 / m.seconds
    sequential = 60 * len(m.reference) / m.sequential_seconds
    rows = [
        "| per job, seconds | p50 | p95 | max | jobs |",
        "|---|---|---|---|---|",
        f"| **wait**: submitted → running | {spread([o.wait for o in outcomes if o.wait is not None])} |",
        f"| run: running → result (images only) | {spread([o.run for o in images if o.run is not None])} |",
        f"| **end to end**: submitted → result (images only) | {spread([o.end_to_end for o in images])} |",
        f"| Stop: submitted → the error (stopped jobs) | {spread([o.end_to_end for o in stopped])} |",
        f"| opening the page: GET the page and its config | {spread([run.page for run in m.students])} |",
        "",
        f"{len(m.students)} students (threads, a gradio_client session each) on `python app.py --offline --models "
        "catalog` (the bundled model; CPU as the app picks it). Each opens the page (the last row), and once every "
        "page is open they all start at the same moment, each running its jobs one after another: "
        f"{', '.join(e.strip('/') for e in MIXES[mix])} ({JOB['width']}×{JOB['height']}, "
        "prompts and seeds of its own; the model's defaults: txt2img "
        f"{GENERATION['sampler']} {GENERATION['steps']} steps CFG {GENERATION['guidance_scale']:g}, Explain "
        f"{EXPLAIN['sampler']} {EXPLAIN['schedule']} {EXPLAIN['steps']} steps CFG {EXPLAIN['guidance_scale']:g}). "
        + (
            f"{stoppers(stop_every)} {STOP_STEPS} steps (at Explain's settings) for one job, its Explain or its "
            "second txt2img, and presses that tab's Stop as its own session once a step has run. "
            if stop_every
            else "No student presses Stop. "
        )
        + "The reference is "
        "the same jobs run one after another from one client just before. Wait ends when gradio_client hears that "
        f"the job runs (looked at every {POLL * 1000:.0f} ms); end to end includes downloading the result's files. "
        f"Memory: the app's process and children, sampled every {SAMPLE} s; disk: its `GRADIO_TEMP_DIR`.",
        "",
        f"- Identical to the sequential run: **{'yes' if identical == expected else 'NO'}** ({identical} of "
        f"{expected} images)",
        f"- Stopped jobs that ended as “Stopped at step k of {STOP_STEPS}”: {sum(_stopped(o.error) for o in stopped)} "
        f"of {len(stopped)}",
        f"- p95 submitted → image: **{p95_end_to_end(m):.2f} s** (bar ≤ {P95_BARS[mix]:g} s: "
        f"{'met' if p95_end_to_end(m) <= P95_BARS[mix] else 'NOT met'})",
        f"- Problems: **{len(problems)}**" + "".join(f"\n  - {problem}" for problem in problems[:10]),
        f"- Load: {m.seconds:.1f} s; throughput **{finished * per_minute:.1f} jobs/min** "
        f"({len(images) * per_minute:.1f} images/min); one client alone, one job after another: {sequential:.1f} "
        "jobs/min",
        f"- App memory (RSS): {mb(m.rss)}",
        f"- Gradio temp folder: {mb(m.disk)}",
        f"- CPU seconds from the start until every client was done: the app {m.cpu[0]:.0f} s, the clients (this "
        f"script, on the same machine) {m.cpu[1]:.0f} s",
        f"- Still serving after the load (a new client's image equals its reference): "
        f"{'yes' if m.still_serving else '**NO**'}",
    ]
    if m.hostile:
        rows += [
            "",
            f"The hostile client sent {m.hostile.rounds} round(s) of every attack during the load (finishing its round "
            "after the students), a Stop without a session after each attack. Refused: an error with a message; "
            "failed: a server error or an error without a message; a path in a message: the repository's or a "
            "temporary folder's. Accepted answers allowed per round: none, except one per flood and any for the "
            "Stops (which must stop no one) and the reload of the one listed model (which must change no result).",
            "",
            *hostile_rows(m.hostile),
        ]
    return "\n".join(rows)


def p95_end_to_end(m: Load) -> float:
    return float(np.percentile([o.end_to_end for o in m.outcomes if o.pixels is not None], 95))


def passed(m: Load, mix: str) -> bool:
    fine = not m.problems() and (m.hostile is None or all(v.fine for v in verdicts(m.hostile)))
    return fine and p95_end_to_end(m) <= P95_BARS[mix]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=STUDENTS)
    parser.add_argument("--hostile", action="store_true", help="add a client sending the probe's attacks")
    parser.add_argument("--stop-every", type=int, default=STOP_EVERY, help="every Nth student presses Stop (0: none)")
    parser.add_argument("--once", action="store_true", help="each student presses Generate once, all together")
    parser.add_argument("--jobs", type=int, help="the app's --jobs (default: its own, 2 on a CPU of 2+ cores)")
    parser.add_argument("--no-write", action="store_true", help="print only: a trial run, not for bench/RESULTS.md")
    args = parser.parse_args()
    mix, stop_every = ("once", 0) if args.once else ("mix", args.stop_every)
    m = measure(args.students, stop_every, args.hostile, mix, args.jobs)
    report = table(m, stop_every, mix)
    verdict = "PASSED" if passed(m, mix) else "FAILED"
    body = f"{report}\n- Verdict: **{verdict}**\n- CPU load before: {m.load_before}\n- CPU load after: {m.load_after}"
    print(body)
    if not args.no_write:
        title = f"Classroom: {args.students} students" + (", one Generate each" if args.once else "")
        title += " and a hostile client" if args.hostile else ""
        title += f" (--jobs {args.jobs})" if args.jobs else ""
        results.write_section(title, body)
    sys.exit(0 if verdict == "PASSED" else 1)


if __name__ == "__main__":
    main()
