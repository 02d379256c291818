"""Decode, crop, resize and encode: truncation, colour repairs, reduced decode quality, crop geometry."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from snapdistill.data import images as im


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def textured(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth-ish varied content: blurred noise plus a gradient and hard-edged shapes."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(128, 50, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    grad = np.linspace(0, 80, w, dtype=np.float32)[None, :, None]
    arr = np.clip(noise + grad, 0, 255).astype(np.uint8)
    cv2.circle(arr, (w // 3, h // 2), h // 5, (250, 30, 30), -1)
    return Image.fromarray(arr)


def test_jpeg_complete_detects_truncation_and_skips_thumbnails():
    data = jpeg_bytes(textured(64, 48))
    assert im.jpeg_complete(data)
    assert not im.jpeg_complete(data[: len(data) // 2])
    assert not im.jpeg_complete(data[:-2])
    # An EXIF thumbnail carries its own EOI before the main scan; a file cut right after it is incomplete.
    thumb = jpeg_bytes(textured(16, 12, seed=1))
    exif = Image.Exif()
    exif[0x010E] = "x"
    with_thumb = jpeg_bytes(textured(64, 48), exif=exif.tobytes())
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    stitched = with_thumb[:2] + app1 + with_thumb[2:]
    assert im.jpeg_complete(stitched)
    assert not im.jpeg_complete(stitched[: 2 + len(app1) + 40])


def test_truncated_jpeg_raises_decode_error():
    data = jpeg_bytes(textured(64, 48))
    header = im.probe(data)
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 64, 48)
    cut = data[: len(data) * 2 // 3]
    assert im.probe(cut).complete is False and header.complete is True
    with pytest.raises(im.DecodeError, match="truncated"):
        im.decode_bgr(cut, im.probe(cut), 32)
    with pytest.raises(im.DecodeError):
        im.probe(b"not an image at all")


@pytest.mark.parametrize(("w", "h", "target", "factor"), [
    (1024, 768, 512, 1), (1536, 1024, 512, 2), (2048, 2048, 512, 4), (8000, 6000, 256, 8), (400, 300, 512, 1),
])
def test_reduce_factor_keeps_short_side_at_least_target(w, h, target, factor):
    assert im.reduce_factor(w, h, target) == factor
    assert min(w, h) // factor >= target or factor == 1


def test_cmyk_and_grayscale_are_converted_to_the_right_colours():
    red = Image.new("RGB", (40, 30), (200, 30, 40))
    cmyk = jpeg_bytes(red.convert("CMYK"))
    header = im.probe(cmyk)
    assert header.mode == "CMYK" and im.REPAIRS[header.mode] == "cmyk_converted"
    assert im.probe(jpeg_bytes(Image.new("L", (7, 5)))) == im.Header("JPEG", "L", 7, 5, exif=False)
    b, g, r = im.decode_bgr(cmyk, header, 16)[15, 20].astype(int)
    assert abs(r - 200) < 12 and abs(g - 30) < 12 and abs(b - 40) < 12
    gray = jpeg_bytes(Image.new("L", (40, 30), 90))
    pixels = im.decode_bgr(gray, im.probe(gray), 16)
    assert pixels.shape == (30, 40, 3) and np.all(np.abs(pixels.astype(int) - 90) <= 2)
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent: flattened onto white
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    flat = im.decode_bgr(buf.getvalue(), im.probe(buf.getvalue()), 16)
    assert flat[5, 5].tolist() == [255, 255, 255]


def test_square_resize_centre_crops_then_resizes():
    # A wide image: left quarter red, middle half green, right quarter blue; the centre crop is all green.
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :50] = (0, 0, 255)
    arr[:, 50:150] = (0, 255, 0)
    arr[:, 150:] = (255, 0, 0)
    out = im.square_resize(arr, 32)
    assert out.shape == (32, 32, 3)
    assert out[:, :, 1].min() == 255 and out[:, :, 0].max() == 0 and out[:, :, 2].max() == 0
    up = im.square_resize(arr[:10, 90:110], 40)  # 10x20 -> crop 10x10 -> upscale
    assert up.shape == (40, 40, 3)


@pytest.mark.parametrize(("w", "h", "factor"), [(1365, 1024, 2), (2100, 2050, 4)])
def test_reduced_decode_matches_full_decode_within_38db(w, h, factor):
    data = jpeg_bytes(textured(w, h, seed=3))
    header = im.probe(data)
    assert im.reduce_factor(header.width, header.height, 512) == factor
    full = im.square_resize(im.decode_bgr(data, header, 512, reduced=False), 512)
    fast_pixels = im.decode_bgr(data, header, 512, reduced=True)
    assert fast_pixels.shape[0] == -(-h // factor)  # it really decoded at reduced scale
    assert im.psnr(full, im.square_resize(fast_pixels, 512)) >= 38.0


def test_encode_is_deterministic_and_psnr_of_identical_is_inf():
    arr = np.asarray(textured(48, 48))
    assert im.encode_jpeg(arr, 95) == im.encode_jpeg(arr.copy(), 95)
    assert im.psnr(arr, arr) == float("inf")
    assert 20 < im.psnr(arr, np.clip(arr.astype(int) + 10, 0, 255).astype(np.uint8)) < 30


def test_exif_orientation_is_applied_and_its_search_skipped_only_without_an_exif_segment():
    plain = jpeg_bytes(textured(96, 64))
    header = im.probe(plain)
    assert header.exif is False  # no EXIF segment: OpenCV is told not to look for an orientation
    for reduced in (False, True):  # the same pixels as OpenCV's default decode, which looks
        assert np.array_equal(im.decode_bgr(plain, header, 32, reduced=reduced),
                              cv2.imdecode(np.frombuffer(plain, np.uint8),
                                           cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = jpeg_bytes(textured(96, 64), exif=exif.tobytes())
    header = im.probe(rotated)
    assert header.exif is True and (header.width, header.height) == (96, 64)
    upright = np.asarray(Image.open(io.BytesIO(rotated)).transpose(Image.Transpose.ROTATE_270))[..., ::-1]
    full = im.decode_bgr(rotated, header, 48, reduced=False)
    assert full.shape == (96, 64, 3) and np.abs(full.astype(int) - upright).mean() < 2
    assert im.decode_bgr(rotated, header, 32, reduced=True).shape == (48, 32, 3)  # rotated at half size too
