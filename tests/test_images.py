"""Tests for sdplay.runtime.images: refusing bad uploads, reading masks, and the crop and paste maths of inpainting.

Malformed files are built in memory; the decompression bomb is a tiny PNG whose header claims a huge size.
"""

import io

import numpy as np
import pytest
from PIL import ExifTags, Image

from bench.handmade import png_claiming_size
from sdplay.runtime.errors import UserError
from sdplay.runtime.images import (
    GONE_MESSAGE,
    MAX_IMAGE_PIXELS,
    blur_mask,
    brush_radius,
    check_mask,
    decode_errors,
    fit_within,
    mask_from_editor,
    mask_from_upload,
    masked_region,
    open_image,
    paste_back,
    round_to_multiple,
)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def painted_layer(size: tuple[int, int], box: tuple[int, int, int, int], alpha: int = 255) -> Image.Image:
    """An editor layer: transparent, with a black brush stroke (gr.ImageMask's fixed colour) over `box`."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((0, 0, 0, alpha), box)
    return layer


# --- open_image ---


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_open_image_returns_rgb_from_bytes_path_and_pil(tmp_path, mode: str) -> None:
    original = noise((24, 16)).convert(mode)
    path = tmp_path / "in.png"
    original.save(path)
    for source in (png_bytes(original), path, str(path), original):
        image = open_image(source)
        assert (image.mode, image.size) == ("RGB", (24, 16))
        assert np.array_equal(np.asarray(image), np.asarray(original.convert("RGB")))
    assert original.mode == mode  # the caller's image is not converted in place


def test_open_image_drops_alpha_without_compositing() -> None:
    image = open_image(Image.new("RGBA", (4, 4), (10, 20, 30, 0)))
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_open_image_applies_exif_orientation() -> None:
    # Stored 40×20 with red on the left; orientation 6 means "rotate 90° clockwise to display".
    stored = Image.new("RGB", (40, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)

    image = open_image(buffer.getvalue())
    assert image.size == (20, 40)
    red, green, blue = image.getpixel((10, 5))
    assert red > 200 and blue < 50  # the left half is now on top
    red, green, blue = image.getpixel((10, 35))
    assert blue > 200 and red < 50


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
    ids=["empty", "text", "garbage", "png-signature-then-garbage"],
)
def test_open_image_refuses_non_images(data: bytes) -> None:
    with pytest.raises(UserError, match="not an image"):
        open_image(data)


def test_open_image_refuses_text_file(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("a prompt, not a picture\n")
    with pytest.raises(UserError, match="PNG, JPEG or WebP"):
        open_image(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a prompt, not a picture\n", "not an image sdplay can read"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an image sdplay can read"),
        (png_bytes(noise((64, 64)))[:500], "corrupt or truncated"),
        (png_claiming_size(20_000, 20_000), "too large"),
    ],
    ids=["text", "png-signature-then-garbage", "truncated", "bomb"],
)
def test_decode_error_messages_name_no_file(tmp_path, data: bytes, message: str) -> None:
    # Pillow's own messages name what it read: a server path, or an object such as <_io.BytesIO object at 0x...>.
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    for source in (path, data):
        with pytest.raises(UserError) as caught:
            open_image(source)
        text = str(caught.value)
        assert message in text
        assert str(tmp_path) not in text and "upload.png" not in text and "BytesIO" not in text and " at 0x" not in text


def test_open_image_refuses_truncated_png() -> None:
    data = png_bytes(noise((64, 64)))
    with pytest.raises(UserError, match="corrupt or truncated"):
        open_image(data[: len(data) // 2])


def test_open_image_missing_file_is_not_a_user_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "size",
    [(20_000, 20_000), (5_000, 4_000)],
    ids=["past-pillow-error-limit", "past-warning-limit"],
)
def test_open_image_refuses_decompression_bombs(size: tuple[int, int]) -> None:
    data = png_claiming_size(*size)
    assert len(data) < 100
    with pytest.raises(UserError, match="16,000,000 pixels"):
        open_image(data)


def test_open_image_refuses_huge_pil_image() -> None:
    with pytest.raises(UserError, match="too large"):
        open_image(Image.new("1", (5_000, 4_000)))
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 16_000_000


# --- masks from the editor and from uploads ---


@pytest.mark.parametrize(
    ("size", "radius"),
    [((64, 64), 4), ((512, 512), 32), ((100, 60), 3), ((16, 16), 2), ((8, 300), 2), ((1024, 768), 48)],
)
def test_brush_radius_follows_the_shorter_side(size: tuple[int, int], radius: int) -> None:
    assert brush_radius(size) == radius


def test_mask_from_editor_nothing_painted() -> None:
    background = noise((32, 24))
    assert mask_from_editor({"background": background, "layers": [], "composite": background}) is None
    transparent = Image.new("RGBA", (32, 24), (0, 0, 0, 0))
    assert mask_from_editor({"background": background, "layers": [transparent], "composite": background}) is None


@pytest.mark.parametrize("as_type", ["pil", "numpy", "filepath"])
def test_mask_from_editor_painted_layers(tmp_path, as_type: str) -> None:
    layers = [painted_layer((32, 24), (2, 3, 10, 8)), painted_layer((32, 24), (20, 10, 30, 20))]
    if as_type == "numpy":
        layers = [np.asarray(layer) for layer in layers]
    elif as_type == "filepath":
        paths = [tmp_path / f"layer{i}.png" for i in range(len(layers))]
        for layer, path in zip(layers, paths, strict=True):
            layer.save(path)
        layers = [str(path) for path in paths]

    mask = mask_from_editor({"background": None, "layers": layers, "composite": None})

    assert (mask.mode, mask.size) == ("L", (32, 24))
    expected = np.zeros((24, 32), dtype=np.uint8)
    expected[3:8, 2:10] = 255
    expected[10:20, 20:30] = 255
    assert np.array_equal(np.asarray(mask), expected)


def test_mask_from_editor_binarises_soft_brush_edges() -> None:
    layer = painted_layer((8, 8), (0, 0, 4, 8), alpha=100)
    layer.paste((0, 0, 0, 200), (4, 0, 8, 8))
    mask = mask_from_editor({"background": None, "layers": [layer], "composite": None})
    assert np.array_equal(np.unique(np.asarray(mask)[:, :4]), [0])
    assert np.array_equal(np.unique(np.asarray(mask)[:, 4:]), [255])


def test_mask_from_editor_counts_translucent_strokes() -> None:
    # gr.ImageMask's half-transparent brush paints alpha 127; its strokes must count, their faint rim must not.
    layer = painted_layer((16, 8), (0, 0, 16, 8), alpha=40)
    layer.paste((255, 0, 255, 127), (4, 2, 12, 6))
    mask = mask_from_editor({"background": None, "layers": [layer], "composite": None})
    assert np.array_equal(np.asarray(mask), np.asarray(rectangle_mask((16, 8), (4, 2, 12, 6))))


def test_mask_from_editor_needs_alpha_layers() -> None:
    with pytest.raises(ValueError, match="image_mode='RGBA'"):
        mask_from_editor({"background": None, "layers": [Image.new("RGB", (8, 8))], "composite": None})


def test_mask_from_upload_uses_luminance_without_transparency() -> None:
    grey = Image.new("L", (16, 8), 0)
    grey.paste(255, (0, 0, 4, 8))
    grey.paste(129, (4, 0, 8, 8))
    grey.paste(128, (8, 0, 12, 8))  # A1111 repaints only above 128
    for upload in (grey, grey.convert("RGB"), grey.convert("RGBA"), np.asarray(grey)):
        mask = mask_from_upload(upload)
        assert mask.mode == "L"
        assert np.array_equal(np.asarray(mask)[0], [255] * 8 + [0] * 8)


def test_mask_from_upload_uses_real_transparency() -> None:
    # Opaque black strokes on a transparent sheet: the alpha, not the colour, marks what to repaint.
    upload = painted_layer((16, 8), (4, 2, 12, 6))
    mask = mask_from_upload(png_bytes(upload))
    assert np.array_equal(np.asarray(mask), np.asarray(rectangle_mask((16, 8), (4, 2, 12, 6))))


def test_check_mask() -> None:
    check_mask(rectangle_mask((64, 32), (1, 1, 2, 2)), (64, 32))
    with pytest.raises(UserError, match="64×32 pixels but the image is 32×64"):
        check_mask(rectangle_mask((64, 32), (1, 1, 2, 2)), (32, 64))
    with pytest.raises(UserError, match="empty"):
        check_mask(Image.new("L", (64, 32)), (64, 32))


def test_blur_mask() -> None:
    mask = rectangle_mask((64, 64), (16, 16, 48, 48))
    unchanged = blur_mask(mask, 0)
    assert unchanged is not mask and np.array_equal(np.asarray(unchanged), np.asarray(mask))

    blurred = np.asarray(blur_mask(mask, 4)).astype(int)
    assert 0 < blurred[32, 16] < 255  # the edge is soft
    assert blurred[32, 32] == 255 and blurred[0, 0] == 0  # far from it nothing changes
    assert blurred[32, 14] > 0  # the blur reaches past the painted area


# --- the "Only masked" crop box ---


@pytest.mark.parametrize(
    ("box", "padding", "aspect", "expected"),
    [
        ((45, 45, 55, 55), 0, 1.0, (45, 45, 55, 55)),
        ((45, 45, 55, 55), 5, 1.0, (40, 40, 60, 60)),
        ((45, 45, 55, 55), 0, 2.0, (40, 45, 60, 55)),  # wide target: grow the width
        ((45, 45, 55, 55), 0, 0.5, (45, 40, 55, 60)),  # tall target: grow the height
        ((0, 40, 10, 60), 0, 2.0, (0, 40, 40, 60)),  # at the left edge: shifted inside
        ((90, 40, 100, 60), 0, 2.0, (60, 40, 100, 60)),  # at the right edge: shifted inside
        ((0, 0, 10, 10), 20, 1.0, (0, 0, 30, 30)),  # padding stops at the image border
        ((45, 0, 55, 100), 0, 2.0, (0, 0, 100, 100)),  # wider than the image: clamped
    ],
)
def test_masked_region(box, padding, aspect, expected) -> None:
    assert masked_region(rectangle_mask((100, 100), box), padding, aspect) == expected


def test_masked_region_a1111_example() -> None:
    # From A1111's `expand_crop_region` docstring: a 128×32 mask processed at 512×512 becomes 128×128.
    left, top, right, bottom = masked_region(rectangle_mask((512, 512), (100, 200, 228, 232)), 0, 1.0)
    assert (right - left, bottom - top) == (128, 128)
    assert (left, right) == (100, 228) and (top + bottom) / 2 == 216


def test_masked_region_empty_mask() -> None:
    with pytest.raises(UserError, match="empty"):
        masked_region(Image.new("L", (8, 8)), 4, 1.0)


# --- pasting the result back ---


def test_paste_back_keeps_unmasked_pixels_identical() -> None:
    original, generated = noise((64, 48), seed=1), noise((64, 48), seed=2)
    mask = blur_mask(rectangle_mask((64, 48), (16, 8, 40, 30)), 3)

    result = np.asarray(paste_back(original, generated, mask))

    alpha = np.asarray(mask)
    assert np.array_equal(result[alpha == 0], np.asarray(original)[alpha == 0])
    assert np.array_equal(result[alpha == 255], np.asarray(generated)[alpha == 255])
    assert (alpha == 0).any() and (alpha == 255).any() and ((alpha > 0) & (alpha < 255)).any()


def test_paste_back_into_crop_box() -> None:
    original = noise((100, 80), seed=1)
    mask = blur_mask(rectangle_mask((100, 80), (40, 30, 60, 50)), 2)
    box = masked_region(mask, 8, 1.0)
    generated = Image.new("RGB", (64, 64), (0, 255, 0))  # generation size, resized into the box

    result = np.asarray(paste_back(original, generated, mask, box))

    alpha = np.asarray(mask)
    assert np.array_equal(result[alpha == 0], np.asarray(original)[alpha == 0])
    assert (result[alpha == 255] == [0, 255, 0]).all()


def test_paste_back_resizes_whole_picture_result() -> None:
    # Generation sizes are multiples of 8, so the result can differ slightly from the original's size.
    original = noise((50, 30))
    mask = rectangle_mask((50, 30), (10, 10, 20, 20))
    result = paste_back(original, Image.new("RGB", (48, 32), "white"), mask)
    assert result.size == (50, 30)
    assert result.getpixel((15, 15)) == (255, 255, 255)
    assert result.getpixel((0, 0)) == original.getpixel((0, 0))


# --- output sizes ---


@pytest.mark.parametrize(
    ("n", "multiple", "expected"),
    [(0, 8, 0), (3, 8, 0), (4, 8, 8), (12, 8, 16), (511, 8, 512), (516, 8, 520), (100, 64, 128)],
)
def test_round_to_multiple(n: int, multiple: int, expected: int) -> None:
    assert round_to_multiple(n, multiple) == expected


@pytest.mark.parametrize(
    ("size", "cap", "expected"),
    [
        ((1024, 768), 512, (512, 384)),
        ((768, 1024), 512, (384, 512)),
        ((300, 203), 512, (304, 200)),  # never scaled up, only rounded
        ((1000, 1000), 500, (496, 496)),  # rounding never passes the cap
        ((4000, 10), 512, (512, 64)),  # sides stay at least 64
        ((513, 500), 1024, (512, 504)),
    ],
)
def test_fit_within(size, cap, expected) -> None:
    assert fit_within(size, cap) == expected


def test_an_upload_deleted_from_the_server_since_says_so_without_its_path(tmp_path):
    """Gradio opens an input's file (the component's preprocess, under `decode_errors`): a page may still hold one
    that the disk cap has deleted."""
    with pytest.raises(UserError) as raised, decode_errors():
        Image.open(tmp_path / "deleted" / "image.png")
    assert str(raised.value) == GONE_MESSAGE and str(tmp_path) not in str(raised.value)
