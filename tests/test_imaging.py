"""One image file -> one square RGB JPEG: modes, orientation, scaling, the failure reasons."""

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from pipeline.imaging import convert as imaging
from pipeline.imaging import decode as imaging_decode
from pipeline.imaging import pixels


def photo(w=640, h=480, seed=0):
    """A smooth picture with some texture (JPEG-friendly, not flat)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 17.0) * np.cos(y / 11.0)], -1)
    a += rng.normal(0, 6, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def encode(im, fmt="JPEG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def halves(w=64, h=48):
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def decoded(jpg):
    out = simplejpeg.decode_jpeg(jpg)
    assert out.shape == (256, 256, 3)
    return out.astype(int)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo(96, 64), quality=95, exif=exif.tobytes())
    assert imaging_decode.jpeg_orientation(data) == orientation
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(imaging_decode.decode(data)[0], want)


def test_rotated_photo_is_upright_and_reports_display_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90 degrees clockwise
    data = encode(halves(64, 48), quality=95, exif=exif.tobytes())
    jpg, w, h = imaging.convert(data, 256)
    assert (w, h) == (48, 64)
    out = decoded(jpg)
    assert out[:100, :, 0].mean() > 200 and out[:100, :, 2].mean() < 60  # top: red
    assert out[-100:, :, 2].mean() > 200 and out[-100:, :, 0].mean() < 60  # bottom: blue


def test_no_exif_or_garbage_exif_means_upright():
    assert imaging_decode.jpeg_orientation(encode(photo(32, 32))) == 1
    bad = b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX\x00\x00\x00\x00\x00\x00" + encode(photo(32, 32))[2:]
    assert imaging_decode.jpeg_orientation(bad) == 1


@pytest.mark.parametrize(
    "h, w, mode, f",
    [
        (480, 640, "stretch", 1),
        (600, 1000, "stretch", 2),
        (1024, 2048, "center-crop", 4),
        (4000, 3000, "stretch", 8),
        (300, 600, "pad", 2),
        (511, 1024, "stretch", 1),
    ],
)
def test_dct_scale_only_when_source_covers_target_twice(h, w, mode, f):
    assert imaging_decode.scale_factor(h, w, 256, mode) == f


def test_large_jpeg_decodes_scaled_but_never_below_target():
    data = encode(photo(1100, 900), quality=90)
    assert imaging_decode.decode(data, 256)[0].shape == (450, 550, 3)  # 1/2, both sides >= 256
    assert imaging_decode.decode(data)[0].shape == (900, 1100, 3)
    jpg, w, h = imaging.convert(data, 256)
    assert (w, h) == (1100, 900)  # the source's size, not the decoded one
    decoded(jpg)


def test_resize_close_to_pil_bicubic():
    a = np.asarray(photo())
    ours = pixels.resize(a, 256, 256).astype(int)
    pil = np.asarray(Image.fromarray(a).resize((256, 256), Image.BICUBIC)).astype(int)
    assert np.abs(ours - pil).max() <= 2


def test_modes_geometry_and_determinism():
    data = encode(halves(400, 200), quality=95)
    stretch = decoded(imaging.convert(data, 256, "stretch")[0])
    crop = decoded(imaging.convert(data, 256, "center-crop")[0])
    pad = decoded(imaging.convert(data, 256, "pad")[0])
    assert stretch[:, :100, 0].mean() > 240 and stretch[:, -100:, 2].mean() > 240
    assert crop[:, :100, 0].mean() > 240 and crop[:, -100:, 2].mean() > 240  # centre of a 2:1 image
    assert pad[:50].max() < 30 and pad[-50:].max() < 30  # black bars above and below
    assert pad[100:156, :100, 0].mean() > 240
    assert imaging.convert(data, 256)[0] == imaging.convert(data, 256)[0]


@pytest.mark.parametrize("kind", ["L", "CMYK", "RGBA-png", "P-png", "I16-png", "1-png", "LA-png"])
def test_every_mode_becomes_rgb(kind):
    base = halves()
    if kind == "L":
        data = encode(base.convert("L"))
    elif kind == "CMYK":
        data = encode(base.convert("CMYK"), quality=95)
    elif kind == "RGBA-png":
        rgba = base.convert("RGBA")
        rgba.putalpha(Image.fromarray(np.r_[np.zeros((24, 64)), np.full((24, 64), 255)].astype(np.uint8)))
        data = encode(rgba, "PNG")
    elif kind == "P-png":
        data = encode(base.convert("P"), "PNG")
    elif kind == "I16-png":
        data = encode(Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257), "PNG")
    elif kind == "1-png":
        data = encode(base.convert("1"), "PNG")
    else:
        data = encode(base.convert("LA"), "PNG")
    out = decoded(imaging.convert(data, 256)[0])
    if kind == "CMYK":
        assert out[:, :100, 0].mean() > 200 and out[:, :100, 2].mean() < 60
    if kind == "RGBA-png":
        assert out[:100].min() > 230  # transparent top: white
        assert out[-100:, :100, 0].mean() > 200 and out[-100:, :100, 1].mean() < 60
    if kind in ("L", "I16-png", "LA-png"):
        assert np.abs(out[..., 0] - out[..., 2]).max() <= 3  # grey stays grey
        assert out[:, :100].mean() > out[:, -100:].mean()  # red is lighter than blue in L


def test_failures_have_reasons(tmp_path):
    data = encode(photo(), quality=90)
    for cut in (0.3, 0.9):
        with pytest.raises(imaging_decode.BadImage) as err:
            imaging.convert(data[: int(len(data) * cut)], 256)
        assert err.value.reason == "truncated"
    png = encode(photo(), "PNG")
    with pytest.raises(imaging_decode.BadImage) as err:
        imaging.convert(png[: len(png) // 2], 256)
    assert err.value.reason == "truncated"
    for junk in (b"", b"not an image at all", np.random.default_rng(0).bytes(5000)):
        with pytest.raises(imaging_decode.BadImage) as err:
            imaging.convert(junk, 256)
        assert err.value.reason == "corrupt"
    with pytest.raises(imaging_decode.BadImage) as err:
        imaging_decode.read(str(tmp_path / "absent.jpg"))
    assert err.value.reason == "missing"
