"""The visualize grid: one row per image, one column per model, attention or mask overlays."""
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gtaseg.cli import main
from gtaseg.evaluation.figures import list_images, model_maps
from gtaseg.models import load_model


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in (("a.jpg", (50, 40)), ("b.png", (30, 60))):
        Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_maps_cover_the_crop_only(image_dir):
    model, info = load_model("random:vit_tiny_patch16_224")
    images = [Image.open(p).convert("RGB") for p in list_images([image_dir])]
    # 70 px: the model sees the top-left 64 px (4×4 patches of 16); the rest stays without overlay.
    attention = model_maps(model, info, images, size=70, mode="attention")
    mask = model_maps(model, info, images, size=70, mode="mask", mass=0.6)
    for a, m in zip(attention, mask):
        assert a.shape == (70, 70) and np.isnan(a[64:]).all() and np.isnan(a[:, 64:]).all()
        inside_a, inside_m = a[:64, :64], m[:64, :64]
        assert inside_a.min() == 0.0 and inside_a.max() == 1.0
        assert set(np.unique(inside_m)) == {0.0, 1.0}


def test_visualize_writes_a_grid(image_dir, tmp_path):
    outputs = {}
    for mode in ("attention", "mask"):
        out = tmp_path / f"{mode}.png"
        result = CliRunner().invoke(main, [
            "visualize", "--ckpt", "random:vit_tiny_patch16_224", "--ckpt", "random:vit_tiny_patch16_224",
            "--label", "source", "--label", "GTA", "--images", str(image_dir), "--out", str(out),
            "--image-size", "64", "--mode", mode])
        assert result.exit_code == 0, result.output
        outputs[mode] = np.asarray(Image.open(out).convert("RGB"))
        # 2 rows (images) × 3 columns (the image, then one per model), 64 px a cell.
        assert outputs[mode].shape == (2 * 64, 3 * 64, 3)
    assert not np.array_equal(outputs["attention"], outputs["mask"])


def test_visualize_label_count_must_match(image_dir, tmp_path):
    result = CliRunner().invoke(main, ["visualize", "--ckpt", "random:vit_tiny_patch16_224", "--label", "a",
                                       "--label", "b", "--images", str(image_dir), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "2 labels for 1 checkpoints" in result.output


def test_the_grid_keeps_each_pictures_aspect_and_fits_long_labels():
    from gtaseg.evaluation.figures import Column, grid_figure

    wide = Image.fromarray(np.zeros((30, 60, 3), dtype=np.uint8))  # 2:1, black
    attention = np.full((64, 64), 0.5, dtype=np.float32)
    name = "stanford-cars/a_very_long_file_name_of_a_photo_from_the_test_split_0001234"
    label = "runs/cars_gta_lam1_r0.15_s0/model.safetensors"
    fig = grid_figure([wide], [name], [Column(label, [attention])], size=64, mode="attention")
    image_ax, model_ax = fig.axes
    shown = image_ax.images[0].get_array()
    assert shown.shape == (64, 64, 3)
    assert (shown[:16] == 255).all() and (shown[48:] == 255).all() and (shown[16:48] == 0).all()  # padded, not squashed
    overlay = model_ax.images[1].get_array()
    assert (overlay[:16, :, 3] == 0).all() and (overlay[16:48, :, 3] > 0).all()  # the map lies on the picture only
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for text in (image_ax.yaxis.label, model_ax.title):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text
    assert "…" in image_ax.get_ylabel() and image_ax.get_ylabel().count("\n") <= 1
