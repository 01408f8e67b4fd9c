"""Tests for sdplay.runtime.metadata: infotext formatting, parsing and storage in image files.

Round trips cover the characters that break naive writers: commas, colons, quotes, newlines, non-Latin text.
"""

import io

import pytest
from gradio import processing_utils
from PIL import ExifTags, Image, PngImagePlugin

from sdplay.runtime.metadata import (
    Infotext,
    format_infotext,
    parse_infotext,
    read_infotext,
    save_png,
    settings_from_infotext,
    with_infotext,
)

PARAMS = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 42, "Size": "512x512"}

A1111_TEXT = """\
masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:detail:0.8>
city at night
Negative prompt: (worst quality:1.4), lowres,
bad anatomy
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, \
Size: 512x768, Model hash: 45dee52b, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, \
Clip skip: 2, Lora hashes: "detail: 1a2b3c4d5e6f", TI: "a, \\"b\\"", Version: v1.10.1"""


def test_format_matches_a1111_layout() -> None:
    text = format_infotext("a cat", "blurry", {**PARAMS, "Denoising strength": 0.75})
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Denoising strength: 0.75"
    )


def test_format_omits_empty_negative_prompt_and_none_values() -> None:
    text = format_infotext("a cat", "", {**PARAMS, "Denoising strength": None})
    assert text == "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512"


def test_format_quotes_like_a1111() -> None:
    text = format_infotext("p", "", {**PARAMS, "Model": 'my, "best": model\nv2'})
    assert text.endswith(r'Model: "my, \"best\": model\nv2"')
    # Quotes alone do not trigger quoting in A1111 either.
    assert format_infotext("p", "", {**PARAMS, "Note": 'say "hi"'}).endswith('Note: say "hi"')


@pytest.mark.parametrize(
    ("prompt", "negative", "value"),
    [
        ("a cat, sitting: on a mat", 'ugly, "bad"', "x, y: z"),
        ('line one, "quoted"\nline two: colon', "neg one\nneg two, more", 'a\nb, "c": d\\e'),
        ("猫が座っている、夕焼け", "ぼやけた, 低品質", "モデル: 猫, 犬"),
        ("🐱 on the moon 🌕, 4k", "😡, blurry", "emoji 🎨, ok: yes"),
        ("кот на ковре, акварель", "размыто: плохо", "модель, версия: 2"),
        ("only a prompt", "", "plain"),
    ],
)
def test_round_trip(prompt: str, negative: str, value: str) -> None:
    params = {**PARAMS, "Model": value, "Denoising strength": 0.75}
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed == Infotext(prompt, negative, {key: str(v) for key, v in params.items()} | {"CFG scale": "7"})


def test_parse_a1111_infotext() -> None:
    parsed = parse_infotext(A1111_TEXT)
    assert parsed.prompt == "masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:detail:0.8>\ncity at night"
    assert parsed.negative_prompt == "(worst quality:1.4), lowres,\nbad anatomy"
    assert parsed.params["Steps"] == "28"
    assert parsed.params["Sampler"] == "DPM++ 2M"
    assert parsed.params["Schedule type"] == "Karras"
    assert parsed.params["Size"] == "512x768"
    assert parsed.params["Denoising strength"] == "0.45"
    assert parsed.params["Lora hashes"] == "detail: 1a2b3c4d5e6f"
    assert parsed.params["TI"] == 'a, "b"'
    assert list(parsed.params) == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
        "Denoising strength", "Clip skip", "Lora hashes", "TI", "Version",
    ]  # fmt: skip


def test_parse_short_last_line_is_prompt() -> None:
    # A1111 takes the last line as parameters only when it holds at least three of them.
    parsed = parse_infotext("a cat\nstyle: watercolor, mood: calm")
    assert parsed == Infotext("a cat\nstyle: watercolor, mood: calm", "", {})


def test_parse_without_prompt() -> None:
    parsed = parse_infotext(format_infotext("", "", PARAMS))
    assert (parsed.prompt, parsed.negative_prompt) == ("", "")
    assert parsed.params["Seed"] == "42"


@pytest.mark.parametrize(
    "text", ["plain latin text", "Prompt 猫, 🐱, кот\nNegative prompt: ぼやけ\nSteps: 20, Seed: 1, Size: 64x64"]
)
def test_png_round_trip_through_file(tmp_path, text: str) -> None:
    path = tmp_path / "out.png"
    save_png(Image.new("RGB", (16, 16), "red"), path, text)
    with Image.open(path) as image:
        assert read_infotext(image) == text
        # PNG tEXt is Latin-1 only; anything else must go into a UTF-8 iTXt chunk.
        is_itxt = isinstance(image.text["parameters"], PngImagePlugin.iTXt)
        assert is_itxt == (not text.isascii())


def test_with_infotext_survives_gradio_png_encoding() -> None:
    text = format_infotext("猫, 🐱", "кот", PARAMS)
    image = with_infotext(Image.new("RGB", (16, 16)), text)
    assert image.info["parameters"] == text
    data = processing_utils.encode_pil_to_bytes(image, format="png")
    with Image.open(io.BytesIO(data)) as served:
        assert read_infotext(served) == text


def test_read_infotext_from_jpeg_exif_user_comment() -> None:
    text = "кот, 猫\nSteps: 20, Seed: 1, Size: 64x64"
    exif = Image.Exif()
    # What A1111 writes through piexif: an 8-byte UNICODE marker, then UTF-16 big-endian.
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\0" + text.encode("utf_16_be")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", exif=exif)
    with Image.open(buffer) as image:
        assert read_infotext(image) == text


def test_read_infotext_absent() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    with Image.open(buffer) as image:
        assert read_infotext(image) is None
    assert read_infotext(Image.new("RGB", (4, 4))) is None


# Parameter lines as A1111 writes them: 1.6 puts the schedule in the sampler's name, 1.9+ writes it apart.
A1111_16 = "Steps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5, Version: v1.6.0"
A1111_19 = (
    "Steps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5, "
    "Version: v1.10.1"
)


@pytest.mark.parametrize(
    ("params", "sampler", "schedule"),
    [
        (A1111_16, "DPM++ 2M SDE", "Karras"),
        (A1111_19, "DPM++ 2M SDE", "Karras"),
        ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Version: v1.6.0", "DPM++ 2M", "Automatic"),
        ("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1", "DPM++ 2M", "Automatic"),
        ("Steps: 20, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7, Seed: 1", "DPM++ 2M", "Uniform"),
        ("Steps: 20, Sampler: PLMS, CFG scale: 7, Seed: 1", "PLMS", "Automatic"),
        ("Steps: 20, Sampler: PNDM, CFG scale: 7, Seed: 1", "PLMS", "Automatic"),  # sdplay before the split
    ],
)
def test_settings_read_a1111_16_and_19_sampler_names(params: str, sampler: str, schedule: str) -> None:
    settings = settings_from_infotext(parse_infotext(f"a cat\n{params}"))
    assert (settings["sampler"], settings["schedule"], settings["steps"]) == (sampler, schedule, 20)


def test_settings_leave_out_a_sampler_sdplay_does_not_have() -> None:
    settings = settings_from_infotext(parse_infotext("a cat\nSteps: 20, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1"))
    assert "sampler" not in settings and settings["seed"] == 1
