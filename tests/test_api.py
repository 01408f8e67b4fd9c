"""The public API, driven with gradio_client against `python app.py` on the tiny model: the contract users rely on."""

import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from playwright.sync_api import expect

from bench.handmade import png_claiming_size
from sdplay.runtime.metadata import parse_infotext, read_infotext
from tests.helpers import CONTRACT, load, long_job, served_app, txt2img


def test_endpoints_and_parameter_names_are_the_contract(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name, parameters in CONTRACT.items():
        names = [p["parameter_name"] for p in endpoints[name]["parameters"]]
        assert names[: len(parameters)] == parameters if name == "/txt2img" else set(parameters) <= set(names)


def test_txt2img_returns_pngs_with_a1111_parameters(client):
    gallery, infotext, seed = txt2img(client, prompt="a cat, 猫: 🐱", negative_prompt="blur")
    path = gallery[0]["image"]
    assert path.endswith(".png") and seed == 5
    stored = parse_infotext(read_infotext(Image.open(path)))
    assert stored.prompt == "a cat, 猫: 🐱" and stored.negative_prompt == "blur"
    assert stored.params["Seed"] == "5" and stored.params["Sampler"] == "Euler" and stored.params["Size"] == "64x64"
    assert stored == parse_infotext(infotext)


def test_schedule_type_is_a_parameter_and_old_combined_sampler_names_still_work(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in [*CONTRACT, "/explain"]:
        assert "schedule" in [p["parameter_name"] for p in endpoints[name]["parameters"]]
    _, uniform, _ = txt2img(client, sampler="DPM++ 2M", schedule="Uniform")
    assert "Sampler: DPM++ 2M, Schedule type: Uniform," in uniform
    old_gallery, old, _ = txt2img(client, sampler="DPM++ 2M Karras")  # the API before the split
    new_gallery, new, _ = txt2img(client, sampler="DPM++ 2M", schedule="Karras")
    assert old == new and "Sampler: DPM++ 2M, CFG scale" in new  # Karras is its default: A1111 writes no type
    assert np.array_equal(load(old_gallery[0]["image"]), load(new_gallery[0]["image"]))
    with pytest.raises(AppError, match="DDIM sampler has no Karras schedule"):
        txt2img(client, sampler="DDIM", schedule="Karras")


def test_same_request_same_pixels(client):
    first, second = txt2img(client, seed=9)[0][0]["image"], txt2img(client, seed=9)[0][0]["image"]
    assert np.array_equal(load(first), load(second))


def test_img2img_and_inpaint_default_to_the_input_size(client, tmp_path):
    source = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(source)
    args = dict(prompt="cat", negative_prompt="", sampler="Euler", steps=4, guidance_scale=7, seed=1)
    gallery, infotext, _ = client.predict(**args, image=handle_file(source), strength=0.6, api_name="/img2img")
    assert Image.open(gallery[0]["image"]).size == (104, 64)
    assert parse_infotext(infotext).params["Denoising strength"] == "0.6"

    mask = tmp_path / "mask.png"
    mask_image = Image.new("L", (100, 60), 0)
    mask_image.paste(255, (30, 20, 60, 40))
    mask_image.save(mask)
    editor = {"background": handle_file(source), "layers": [], "composite": None}
    gallery, _, _ = client.predict(**args, image=editor, mask=handle_file(mask), mask_blur=0, api_name="/inpaint")
    result, original = load(gallery[0]["image"]), load(source)
    outside = np.asarray(mask_image) == 0
    assert result.shape == original.shape and np.array_equal(result[outside], original[outside])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 151}, "151"),
        ({"width": 2048}, "2048"),
        ({"sampler": "Euler z"}, "Euler z"),
        ({"prompt": "x" * 10_001}, "characters"),
        ({"prompt": "a (red cat"}, r"The prompt has a '\(' at character 3 that is never closed"),
        (
            {"negative_prompt": "[a:b:9]"},
            "The negative prompt has prompt editing at character 1 that switches at step 9",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, overrides, message):
    with pytest.raises(AppError, match=message):
        txt2img(client, **overrides)
    assert txt2img(client)[0]


def test_undecodable_uploads_and_empty_masks_are_clear_errors(client, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    args = dict(prompt="cat", negative_prompt="", sampler="Euler", steps=2, guidance_scale=7, seed=1)
    with pytest.raises(AppError, match="image"):
        client.predict(**args, image=handle_file(junk), api_name="/img2img")
    for name, size in (("warns.png", (5000, 4000)), ("bomb.png", (20000, 20000))):
        (tmp_path / name).write_bytes(png_claiming_size(*size))  # a tiny file whose header claims 20-400 MP
        with pytest.raises(AppError, match="too large|decompression bomb"):
            client.predict(**args, image=handle_file(tmp_path / name), api_name="/img2img")
    source = tmp_path / "input.png"
    Image.new("RGB", (64, 64), "white").save(source)
    editor = {"background": handle_file(source), "layers": [], "composite": None}
    with pytest.raises(AppError, match="mask is empty"):
        client.predict(**args, image=editor, api_name="/inpaint")


def test_non_image_uploads_say_what_is_wrong_and_name_no_server_path(client, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("a prompt, not a picture\n")
    args = dict(prompt="cat", negative_prompt="", sampler="Euler", steps=2, guidance_scale=7, seed=1)
    for api_name, kwargs in {"/img2img": args, "/png_info": {}}.items():
        with pytest.raises(AppError) as caught:
            client.predict(**kwargs, image=handle_file(notes), api_name=api_name)
        message = str(caught.value)
        assert "not an image sdplay can read" in message and "PNG, JPEG or WebP" in message
        # Pillow's message names the upload's copy in Gradio's temporary folder, /tmp/gradio/<hash>/notes.png.
        assert "/tmp" not in message and "gradio" not in message.lower() and "notes" not in message


def test_plain_http_posts_cannot_skip_the_queue(app_url):
    response = requests.post(f"{app_url}gradio_api/api/txt2img/", json={"data": ["a", "", "Euler", 2, 7, 1, 64, 64]})
    assert response.status_code == 404


def test_cancel_stops_the_job_and_frees_the_model(client):
    job = long_job(client, steps=150, size=1024, seed=1)
    job.cancel()
    started = time.monotonic()
    assert txt2img(client, seed=2)[0]  # the next job runs at once, not after 150 big steps
    assert time.monotonic() - started < 20


def test_four_concurrent_clients_get_exactly_their_sequential_images(app_url, client):
    seeds = [21, 22, 23, 24]
    sequential = [load(txt2img(client, seed=s, prompt=f"cat {s}")[0][0]["image"]) for s in seeds]
    barrier = threading.Barrier(len(seeds))

    def concurrent(seed: int) -> np.ndarray:
        own = Client(app_url, verbose=False)
        barrier.wait()
        return load(txt2img(own, seed=seed, prompt=f"cat {seed}")[0][0]["image"])

    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(concurrent, seeds))
    for expected, got in zip(sequential, results, strict=True):
        assert np.array_equal(expected, got)


def test_api_clients_get_progress_and_the_images_but_no_previews(client):
    job = client.submit(
        prompt="a red cat", negative_prompt="", sampler="Euler", steps=80, guidance_scale=7, seed=3, width=64,
        height=64, api_name="/txt2img",
    )  # fmt: skip
    progress = set()
    while not job.done():
        progress.update(unit.desc for unit in job.status().progress_data or [])
        time.sleep(0.005)
    gallery, _, seed = job.result()
    *streamed, (last, _, _) = job.outputs()
    assert last == gallery and seed == 3
    # Previews are for the web page: an API caller gets empty updates, where Gradio can cancel its job.
    assert streamed and all(output == ({"__type__": "update"},) * 3 for output in streamed)
    assert any(re.fullmatch(r"Step \d+/80 · about \d+ s left", desc or "") for desc in progress), progress
    assert Image.open(gallery[0]["image"]).size == (64, 64)


@pytest.mark.parametrize("api_name", ["/img2img", "/inpaint"])
def test_the_image_tabs_know_an_api_caller_as_text_to_image_does(client, tmp_path, api_name):
    """Their handlers get the caller's request (Gradio fills in only positional ones): a script gets no previews,
    and its session owns the job (Stop)."""
    source, mask = tmp_path / "input.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "gray").save(source)
    Image.new("L", (64, 64), 255).save(mask)
    editor = {"background": handle_file(source), "layers": [], "composite": None}
    inputs = {"image": handle_file(source)} if api_name == "/img2img" else {"image": editor, "mask": handle_file(mask)}
    settings = dict(prompt="cat", negative_prompt="", sampler="Euler", steps=40, guidance_scale=7, seed=1)
    job = client.submit(**settings, strength=1.0, **inputs, api_name=api_name)
    job.result()
    *streamed, _ = job.outputs()
    assert streamed and all(output == ({"__type__": "update"},) * 3 for output in streamed)


def stop_handlers(app_url: str) -> list[int]:
    """The fn_index of each Stop button's click handler, read from the app's public config as a script can."""
    config = requests.get(f"{app_url}config", timeout=10).json()
    stops = {c["id"] for c in config["components"] if c.get("props", {}).get("value") == "Stop"}
    return [d["id"] for d in config["dependencies"] if any(target[0] in stops for target in d["targets"])]


def post_stop(app_url: str, fn_index: int, **session) -> None:
    """Press Stop as a raw HTTP request (as the probe did), with or without a session."""
    response = requests.post(f"{app_url}gradio_api/run/predict", json={"fn_index": fn_index, "data": [0], **session})
    assert response.status_code < 500


def test_a_stop_without_a_session_stops_no_ones_job(app_url):
    handlers = stop_handlers(app_url)
    assert len(handlers) >= 4  # one per generation tab and Explain
    job = long_job(Client(app_url, verbose=False))
    for fn_index in handlers:
        post_stop(app_url, fn_index)
    gallery, infotext, seed = job.result(timeout=120)
    assert "Steps: 60" in infotext and seed == 4 and Image.open(gallery[0]["image"]).size == (256, 256)


def test_an_api_job_stopped_by_its_own_session_is_an_error_not_a_result(app_url):
    own = Client(app_url, verbose=False)
    job = long_job(own)
    post_stop(app_url, stop_handlers(app_url)[0], session_hash=own.session_hash)
    with pytest.raises(AppError, match=r"Stopped at step \d+ of 60"):
        job.result(timeout=120)
    assert txt2img(own)[0]  # and the model is free again


@pytest.fixture(scope="module")
def classroom_url(tiny_model):
    """The app as a teacher hosts it: a login for the class, an admin login, only the listed models."""
    flags = ["--models", "catalog", "--auth", "class:blackboard", "--admin", "teacher:chalk"]
    yield from served_app(tiny_model, *flags, log_name="classroom.log")


def logged_in(url: str, user: str, password: str) -> requests.Session:
    session = requests.Session()
    assert session.post(f"{url}login", data={"username": user, "password": password}).json() == {"success": True}
    return session


def load_model(session: requests.Session, url: str, name: str) -> str:
    """Press Load by script, as `/gradio_api/call/load_model` allows: the last event, "complete: [outputs]" or
    "error: {message}". Each press is its own session, as a page's would be: requests without one share a single
    place in the queue, which the previous press may hold until Gradio has finished it."""
    started = session.post(f"{url}gradio_api/call/load_model", json={"data": [name], "session_hash": uuid.uuid4().hex})
    assert started.status_code == 200, started.text
    stream = session.get(f"{url}gradio_api/call/load_model/{started.json()['event_id']}").text
    event, data = stream.strip().split("\n\n")[-1].split("\n")
    return f"{event.removeprefix('event: ')}: {json.dumps(json.loads(data.removeprefix('data: ')), ensure_ascii=False)}"


def test_only_the_admin_switches_models_and_only_to_listed_ones(classroom_url, tiny_model):
    assert requests.post(f"{classroom_url}gradio_api/call/load_model", json={"data": ["shapes"]}).status_code == 401
    student, teacher = logged_in(classroom_url, "class", "blackboard"), logged_in(classroom_url, "teacher", "chalk")
    assert "Only the server's admin may switch models" in load_model(student, classroom_url, "shapes")
    assert "not in the list of choices" in load_model(teacher, classroom_url, "nobody/any-model")
    switched = load_model(teacher, classroom_url, "shapes")
    assert switched.startswith("complete: ") and re.search(r"shapes · .* · Loaded by teacher at \d\d:\d\d", switched)
    assert "Loaded by teacher" in load_model(teacher, classroom_url, tiny_model.name)


@pytest.mark.browser
def test_the_admin_alone_sees_the_queue_under_the_status_line(classroom_url, browser):
    """The teacher's page shows the GPU queue's last minute, live; a student's page does not show it."""
    pages = {}
    for user, password in (("teacher", "chalk"), ("class", "blackboard")):
        pages[user] = browser.new_context().new_page()
        pages[user].goto(classroom_url)
        pages[user].get_by_label("username").fill(user)
        pages[user].get_by_label("password").fill(password)
        pages[user].get_by_role("button", name="Login").click()
    try:
        expect(pages["class"].locator(".status").first).to_contain_text("cpu", timeout=30_000)
        expect(pages["class"].locator(".queue-panel")).to_have_count(0)
        teacher = pages["teacher"]
        panel = teacher.get_by_test_id("markdown").and_(teacher.locator(".queue-panel"))
        expect(panel).to_contain_text("Queue, last minute:", timeout=30_000)
        txt2img(Client(classroom_url, auth=("class", "blackboard"), verbose=False))  # a student's job ...
        expect(panel).to_contain_text(re.compile(r"[1-9]\d* jobs/min · 0 waiting now · p95 wait \d+\.\d s"))
    finally:
        for page in pages.values():
            page.context.close()


def test_an_overlong_model_name_is_a_clear_error_and_the_model_keeps_serving(app_url, client):
    stream = load_model(requests.Session(), app_url, "a" * 5000)
    assert stream.startswith("error: ") and "not a model name (5000 characters): give a Hub id, org/name" in stream
    assert "File name too long" not in stream and txt2img(client)[0]
