"""Generation parameters stored in images, in AUTOMATIC1111's "infotext" format.

A1111, civitai and most image browsers read the `parameters` PNG text chunk written by `format_infotext`.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, PngImagePlugin

from sdplay.runtime.errors import UserError
from sdplay.runtime.samplers import resolve

INFOTEXT_KEY = "parameters"

# A1111's `re_param_code` (modules/infotext_utils.py): a key, then a JSON-quoted or comma-free value.
_PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE_PREFIX = "Negative prompt:"
# EXIF UserComment starts with an 8-byte character code; A1111 writes UNICODE (UTF-16 big-endian, via piexif).
_EXIF_CHARSETS = {b"UNICODE\0": "utf_16_be", b"ASCII\0\0\0": "ascii"}


@dataclass(frozen=True)
class Infotext:
    """A parsed infotext; `params` keeps A1111's keys and unquoted string values in their original order."""

    prompt: str
    negative_prompt: str
    params: dict[str, str]


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Prompt, optional `Negative prompt:` line, then `Key: value, ...`; None values are left out, as A1111 does.

    Readers recognise the last line as parameters only if it holds at least three of them.
    """
    params_line = ", ".join(
        f"{key}: {_quote(_format_value(value))}" for key, value in params.items() if value is not None
    )
    negative_line = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{params_line}".strip()


def parse_infotext(text: str) -> Infotext:
    """Split an infotext into prompt, negative prompt and parameters, as A1111's `parse_generation_parameters`.

    Lines are stripped, so leading and trailing spaces of prompt lines are not kept.
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_PATTERN.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            # This and every later line belong to the negative prompt.
            in_negative = True
            line = line.removeprefix(_NEGATIVE_PREFIX).strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    params = {key: _unquote(value) for key, value in _PARAM_PATTERN.findall(last_line)}
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)


def with_infotext(image: Image.Image, text: str) -> Image.Image:
    """Attach `text` to `image`: Gradio copies PIL text info into the PNG it serves from a format="png" component."""
    image.info[INFOTEXT_KEY] = text
    return image


def read_infotext(image: Image.Image) -> str | None:
    """The infotext of an image: the PNG `parameters` chunk, else A1111's EXIF UserComment (JPEG, WebP)."""
    # `.text` also reads text chunks stored after the image data, which `.info` misses until the image is loaded.
    chunks = image.text if isinstance(image, PngImagePlugin.PngImageFile) else image.info
    if INFOTEXT_KEY in chunks:
        return str(chunks[INFOTEXT_KEY])
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(comment, bytes) or not comment:
        return None
    encoding = _EXIF_CHARSETS.get(comment[:8])
    text = comment[8:].decode(encoding, errors="ignore") if encoding else comment.decode("utf-8", errors="ignore")
    return text.rstrip("\0") or None


def save_png(image: Image.Image, path: str | Path, text: str) -> None:
    """Save `image` as a PNG carrying `text`; PIL stores non-Latin-1 text as a UTF-8 iTXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(INFOTEXT_KEY, text)
    image.save(path, format="PNG", pnginfo=info)


def _format_value(value: object) -> str:
    """Floats without a trailing `.0` (CFG scale: 7), other values as `str`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(text: str) -> str:
    """A1111's `quote`: JSON-quote a value only when it holds a comma, a colon or a newline."""
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    """A1111's `unquote`: decode a JSON-quoted value, leave anything else as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def settings_from_infotext(info: Infotext) -> dict[str, object]:
    """The request fields an infotext records (`steps`, `sampler`, `schedule`, `guidance_scale`, `seed`, ...).

    Values that are missing or unreadable are left out, so a partial infotext restores what it can. The sampler is
    read as A1111 1.9+ reads it: `Sampler: DPM++ 2M Karras` (before 1.9) and `Sampler: DPM++ 2M, Schedule type:
    Karras` give the same pair, and a missing schedule type is the sampler's default ("Automatic").
    """
    settings: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    if "Sampler" in info.params:
        try:
            settings["sampler"], settings["schedule"] = resolve(
                info.params["Sampler"], info.params.get("Schedule type")
            )
        except UserError:
            pass  # a sampler sdplay does not have: the tab keeps its own
    readers = {
        "Steps": ("steps", int),
        "CFG scale": ("guidance_scale", float),
        "Seed": ("seed", int),
        "Denoising strength": ("strength", float),
    }
    for key, (field, read) in readers.items():
        try:
            settings[field] = read(info.params[key])
        except (KeyError, ValueError):
            pass
    width, _, height = info.params.get("Size", "").partition("x")
    if width.isdigit() and height.isdigit():
        settings["width"], settings["height"] = int(width), int(height)
    return settings
