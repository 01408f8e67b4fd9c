"""Safe decoding of uploaded images and the mask maths of inpainting.

Masks are mode "L" images of the picture's size: 0 keeps a pixel, 255 repaints it, values between blend.
"""

import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from sdplay.runtime.errors import UserError

# About 16 megapixels (a 4096 × 4096 image still fits). Pillow warns above this and refuses at twice it; we refuse
# at the warning, so a small compressed upload cannot make the server allocate gigabytes.
MAX_IMAGE_PIXELS = 16_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Process-wide, like the limit itself: Gradio opens uploads too, before our code sees them.
warnings.simplefilter("error", Image.DecompressionBombWarning)

# A1111 binarises masks with `x > 128`.
MASK_THRESHOLD = 128
TOO_LARGE_MESSAGE = (
    f"The image is too large: the limit is {MAX_IMAGE_PIXELS:,} pixels (about 16 megapixels). "
    "Scale it down and upload it again."
)
EMPTY_MASK_MESSAGE = "The mask is empty: paint over the area to repaint, or upload a mask where white marks it."
# Pillow's own messages name the file it read: for an upload, a path in the server's temporary folder.
NOT_AN_IMAGE_MESSAGE = "The upload is not an image sdplay can read: use a PNG, JPEG or WebP file."
CORRUPT_MESSAGE = "The image is corrupt or truncated: save it again and upload it."
# A page can hold a file that the server has deleted since (--max-disk deletes the oldest).
GONE_MESSAGE = "The image is no longer on the server, which deletes its oldest files: upload or generate it again."

ImageSource = str | Path | bytes | Image.Image | np.ndarray


def open_image(source: ImageSource) -> Image.Image:
    """Decode an upload into an upright RGB image, or raise `UserError` saying what is wrong with it.

    Transparency is dropped, not composited: transparent pixels keep whatever colour they store.
    """
    return _decode(source).convert("RGB")


@contextmanager
def decode_errors() -> Iterator[None]:
    """Turn Pillow's errors while decoding into a `UserError` that says what is wrong and names no file."""
    try:
        yield
    except UserError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UserError(TOO_LARGE_MESSAGE) from error
    except Image.UnidentifiedImageError as error:
        raise UserError(NOT_AN_IMAGE_MESSAGE) from error
    except FileNotFoundError as error:
        raise UserError(GONE_MESSAGE) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UserError(CORRUPT_MESSAGE) from error


def brush_radius(size: tuple[int, int]) -> int:
    """The mask brush's radius for an image of `size`: 1/16 of its shorter side, at least 2 pixels.

    A fixed size does not fit every image: 24 pixels, fine on 512², covers most of a 64² picture in a few strokes.
    """
    return max(2, min(size) // 16)


def mask_from_editor(value: Mapping[str, object]) -> Image.Image | None:
    """The painted mask of a `gr.ImageMask`/`gr.ImageEditor` value, or None if nothing was painted.

    The value is `{"background", "layers", "composite"}`; strokes are the alpha of the layers (their colour is
    irrelevant), so the component must keep its default image_mode="RGBA". The brush may be translucent: a pixel
    is painted where its alpha is above half the strongest alpha, which also drops the faint edges of soft strokes.
    """
    mask: Image.Image | None = None
    for layer in value["layers"]:
        if layer is None:
            continue
        layer = _decode(layer)
        if "A" not in layer.getbands():
            raise ValueError(f"Editor layers need an alpha channel, got mode {layer.mode}: keep image_mode='RGBA'.")
        alpha = layer.getchannel("A")
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return _binarise(mask, mask.getextrema()[1] // 2)


def mask_from_upload(image: ImageSource) -> Image.Image:
    """An uploaded mask where white (or opaque, if the image has real transparency) marks what to repaint."""
    image = _decode(image)
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        # A fully opaque alpha channel carries no mask: read the grey levels instead, as A1111 does.
        if alpha.getextrema() != (255, 255):
            return _binarise(alpha)
    return _binarise(image.convert("L"))


def check_mask(mask: Image.Image, image_size: tuple[int, int]) -> None:
    """Raise `UserError` if the mask does not fit the image or marks nothing to repaint."""
    if mask.size != image_size:
        raise UserError(
            f"The mask is {mask.width}×{mask.height} pixels but the image is {image_size[0]}×{image_size[1]}: "
            "upload a mask of the same size as the image."
        )
    if mask.getbbox() is None:
        raise UserError(EMPTY_MASK_MESSAGE)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """Soften the mask edge so the repainted area blends in; radius 0 returns an unchanged copy."""
    if radius == 0:
        return mask.copy()
    return mask.filter(ImageFilter.GaussianBlur(radius))


def masked_region(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """A1111's "Only masked" crop box (left, top, right, bottom) around the mask.

    The mask's bounding box grows by `padding` on each side, then around its centre to the aspect ratio
    `aspect` (width / height of the generation size), and is kept inside the image. Pass the blurred mask, so
    the box covers every pixel that `paste_back` may change.
    """
    box = mask.getbbox()
    if box is None:
        raise UserError(EMPTY_MASK_MESSAGE)
    left, top, right, bottom = box
    left, top = max(left - padding, 0), max(top - padding, 0)
    right, bottom = min(right + padding, mask.width), min(bottom + padding, mask.height)
    width, height = right - left, bottom - top
    if width / height > aspect:
        top, bottom = _grow_span(top, bottom, round(width / aspect), mask.height)
    else:
        left, right = _grow_span(left, right, round(height * aspect), mask.width)
    return left, top, right, bottom


def paste_back(
    original: Image.Image,
    generated: Image.Image,
    mask: Image.Image,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Blend `generated` over `original` through `mask`, so pixels where the mask is 0 stay bit-identical.

    With a crop `box` the generated image covers that box; without, the whole picture. It is resized to fit.
    """
    left, top, right, bottom = box or (0, 0, original.width, original.height)
    size = (right - left, bottom - top)
    generated = generated.convert(original.mode)
    if generated.size != size:
        generated = generated.resize(size, Image.Resampling.LANCZOS)
    layer = original.copy()
    layer.paste(generated, (left, top))
    return Image.composite(layer, original, mask)


def round_to_multiple(n: int, multiple: int = 8) -> int:
    """The nearest multiple of `multiple` (halves round up)."""
    return (n + multiple // 2) // multiple * multiple


def fit_within(size: tuple[int, int], cap: int) -> tuple[int, int]:
    """Scale `size` down, keeping its aspect ratio, so both sides are at most `cap`; sides are multiples of 8, ≥ 64.

    The UNet works on latents 1/8 of the image size, so generation sizes must be multiples of 8.
    """
    scale = min(1.0, cap / max(size))
    largest = cap // 8 * 8
    width, height = (max(64, min(round_to_multiple(round(side * scale)), largest)) for side in size)
    return width, height


def _decode(source: ImageSource) -> Image.Image:
    """Load an image fully, in its own mode and upright, refusing corrupt data and decompression bombs."""
    if isinstance(source, np.ndarray):
        source = Image.fromarray(source)
    if not isinstance(source, Image.Image | bytes):
        # Read files ourselves: a missing file is a bug to surface, not a corrupt upload.
        source = Path(source).read_bytes()
    with decode_errors():
        image = source if isinstance(source, Image.Image) else Image.open(io.BytesIO(source))
        # Checked by hand too, before decoding: warning filters differ between processes (pytest resets them).
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise UserError(TOO_LARGE_MESSAGE)
        image.load()
        return ImageOps.exif_transpose(image)


def _binarise(mask: Image.Image, threshold: int = MASK_THRESHOLD) -> Image.Image:
    """0 or 255 from a mode "L" image: 255 where it is above `threshold`."""
    return mask.point(lambda value: 255 if value > threshold else 0)


def _grow_span(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [start, end) to `length` around its centre, shifted back inside [0, limit) and clipped to it."""
    start -= (length - (end - start)) // 2
    end = start + length
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, min(end, limit)
