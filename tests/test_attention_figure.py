import numpy as np
import pytest
from PIL import Image

from model.infer.attention_figure import attention_figure, figure_paths, save_attention_figure, upsample


def one_hot(grid, cell):
    a = np.zeros(grid[0] * grid[1], dtype=np.float32)
    a[cell] = 1.0
    return a.tolist()


def result_for(words, grid, cells):
    return {
        "captions": [{"text": " ".join(words), "score": -3.25}, {"text": "other", "score": -4.0}],
        "words": words,
        "attention": [one_hot(grid, c) for c in cells],
        "grid": list(grid),
    }


def test_upsample_is_smooth_and_peaks_on_the_attended_cell():
    grid = (4, 8)
    # Cell (row 1, col 6) of a 4x8 grid over a 160x80 image: centre x = 6.5 * 20, y = 1.5 * 20.
    shade = upsample(one_hot(grid, 1 * 8 + 6), grid, (160, 80))
    assert shade.shape == (80, 160) and shade.dtype == np.float32
    assert 0.0 <= shade.min() and shade.max() <= 1.0
    y, x = np.unravel_index(shade.argmax(), shade.shape)
    assert abs(x - 130) <= 10 and abs(y - 30) <= 10
    assert shade[70, 10] < 0.05  # far corner: nothing
    # Smooth: no tile edges, neighbouring pixels differ by a small step only.
    assert np.abs(np.diff(shade, axis=1)).max() < 0.1
    assert np.abs(np.diff(shade, axis=0)).max() < 0.1


def test_upsample_of_uniform_attention_is_flat():
    shade = upsample([0.25] * 4, (2, 2), (50, 30))
    assert np.allclose(shade, 1.0, atol=1 / 255)


def test_figure_has_the_image_and_one_panel_per_word():
    image = Image.new("RGB", (120, 90), (30, 120, 200))
    words = ["red", "circle", "left"]
    fig = attention_figure(image, result_for(words, (8, 8), [0, 27, 63]))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 + len(words)
    assert [ax.get_title() for ax in shown[1:]] == words
    assert shown[0].get_title() == "score -3.25"
    assert fig._suptitle.get_text() == "red circle left"
    # Each word panel: the image, then the shade over it, at the image's size.
    for ax in shown[1:]:
        assert [im.get_array().shape[:2] for im in ax.images] == [(90, 120), (90, 120)]


@pytest.mark.parametrize("size", [(1, 1), (640, 480), (3000, 200)])
def test_saved_figure_is_a_png_for_any_image_size(tmp_path, size):
    path = tmp_path / "fig.png"
    image = Image.new("L", size, 128)
    save_attention_figure(image, result_for(["a", "b"], (8, 8), [5, 9]), path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 50
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temp file left behind


def test_attended_region_stays_bright_the_rest_darkens(tmp_path):
    image = Image.new("RGB", (200, 200), (255, 255, 255))
    fig = attention_figure(image, result_for(["top"], (2, 2), [0]))  # top-left cell
    fig.canvas.draw()
    ax = [a for a in fig.axes if a.images][1]
    shade = ax.images[1].get_array()[..., 3]
    assert shade[50, 50] < 0.2 and shade[150, 150] > 0.7


def test_crop_mode_keeps_the_uncropped_sides_dark():
    image = Image.new("RGB", (300, 100), (255, 255, 255))
    fig = attention_figure(image, result_for(["x"], (2, 2), [0]), resize_mode="crop")
    shade = [a for a in fig.axes if a.images][1].images[1].get_array()[..., 3]
    # The grid covers x in [100, 200); its top-left cell is around (125, 25).
    assert shade[25, 125] < 0.2
    assert shade[:, :100].min() == pytest.approx(0.8) and shade[:, 200:].min() == pytest.approx(0.8)


def test_exif_rotated_image_is_drawn_upright():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.getexif()[0x0112] = 6  # EXIF Orientation: rotate 90 degrees on display
    fig = attention_figure(image, result_for(["x"], (2, 2), [0]))
    assert [a for a in fig.axes if a.images][0].images[0].get_array().shape[:2] == (200, 100)


def test_figure_paths_name_one_file_per_image():
    assert figure_paths("out/att.png", ["a/x.jpg"]) == ["out/att.png"]
    assert figure_paths("att.png", ["a/x.jpg", "b/y.png", "c/x.png"]) == ["att-x.png", "att-y.png", "att-x-2.png"]
    assert figure_paths("att", ["x.jpg", "y.jpg"]) == ["att-x.png", "att-y.png"]


def test_caption_cli_writes_figures_and_json_with_attention(tmp_path):
    import json

    import torch
    from click.testing import CliRunner
    from serve_checkpoint import GRID, make_checkpoint

    from tools.cli.main import cli

    ckpt = make_checkpoint(tmp_path / "run")
    for name, colour in (("red.jpg", (220, 30, 30)), ("blue.png", (30, 30, 220))):
        img = Image.new("RGB", (96, 64), (120, 120, 120))
        img.paste(colour, (10, 10, 40, 40))
        img.save(tmp_path / name)
    images = [str(tmp_path / "red.jpg"), str(tmp_path / "blue.png")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(
            cli, ["caption", "--checkpoint", str(ckpt), *images, "--json", "--attention", str(tmp_path / "att.png")]
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    for line in lines:
        assert line["grid"] == GRID and len(line["captions"]) == 3
        assert line["captions"][0]["text"] == " ".join(line["words"])
        assert len(line["attention"]) == len(line["words"]) and all(len(r) == 64 for r in line["attention"])
    for stem in ("red", "blue"):
        with Image.open(tmp_path / f"att-{stem}.png") as png:
            assert png.format == "PNG"
