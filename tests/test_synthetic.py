"""The synthetic benchmark: reproducible, safely cached, masked, with a real background shortcut and object cue."""
import colorsys
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import measure
from skimage.morphology import disk

from gtaseg.data import Split
from gtaseg.data import synthetic
from gtaseg.data.synthetic import SyntheticConfig, default_cache_root, generate, synthetic_root, synthetic_split
from gtaseg.errors import DataError, GtasegError

TINY = SyntheticConfig(num_classes=3, train_per_class=3, test_per_class=2, image_size=64)
# Enough images for the statistics below, still a few seconds to generate.
STATS = SyntheticConfig(num_classes=10, train_per_class=20, test_per_class=10)


@pytest.fixture(scope="module")
def stats_root(tmp_path_factory) -> Path:
    return generate(STATS, tmp_path_factory.mktemp("synthetic"))


def load(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, b = generate(TINY, tmp_path / "a"), generate(TINY, tmp_path / "b")
    assert digests(a) == digests(b)
    c = generate(replace(TINY, seed=1), tmp_path / "c")
    images = [name for name in digests(a) if name.startswith(("train", "test"))]
    differ = sum(digests(a)[name] != digests(c)[name] for name in images)
    assert differ == len(images)


def test_layout_counts_and_split(tmp_path):
    root = generate(TINY, tmp_path)
    assert root == tmp_path / TINY.key
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == TINY.classes == ["c00_1spot_fork", "c01_2spot_fork", "c02_3spot_fork"]
    assert manifest["counts"] == {"train": 9, "test": 6}
    for split, per_class in (("train", 3), ("test", 2)):
        for name in TINY.classes:
            assert len(list((root / split / name).glob("*.png"))) == per_class
            assert len(list((root / "masks" / split / name).glob("*.png"))) == per_class
        s = synthetic_split(root, split)
        assert isinstance(s, Split) and len(s) == 3 * per_class
        assert s.classes == TINY.classes and sorted(set(s.targets)) == [0, 1, 2]
        for (image, label), mask in zip(s.samples, s.masks):
            assert Path(image).parent.name == TINY.classes[label]
            assert Path(mask).relative_to(root / "masks") == Path(image).relative_to(root)
    with pytest.raises(DataError):
        synthetic_split(root, "val")


def test_masks_are_binary_whole_objects_of_sane_size(stats_root):
    fractions = []
    for split in ("train", "test"):
        s = synthetic_split(stats_root, split)
        for (image, _), mask in zip(s.samples, s.masks):
            m = load(mask)
            assert load(image).shape == (*m.shape, 3) == (STATS.image_size, STATS.image_size, 3)
            assert set(np.unique(m)) <= {0, 1}
            assert measure.label(m).max() == 1  # one solid object, not fragments
            fractions.append(m.mean())
    assert 0.1 <= min(fractions) and max(fractions) <= 0.5
    assert 0.18 <= np.mean(fractions) <= 0.4


def test_second_call_reuses_the_cache(tmp_path, monkeypatch):
    root = generate(TINY, tmp_path)
    before = digests(root)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "_write_split", fail)
    assert generate(TINY, tmp_path) == root
    assert digests(root) == before


def test_synthetic_root_is_the_generated_dataset_of_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("GTASEG_CACHE", str(tmp_path))
    options = {"num_classes": 3, "train_per_class": 3, "test_per_class": 2, "image_size": 64}
    assert synthetic_root("synthetic", options) == default_cache_root() / TINY.key
    assert (default_cache_root() / TINY.key / "manifest.json").is_file()
    assert synthetic_root("pet", options) is None
    with pytest.raises(GtasegError, match="unknown synthetic option"):
        synthetic_root("synthetic", {"part_size": 2})


def test_dataset_without_manifest_is_regenerated(tmp_path):
    root = generate(TINY, tmp_path)
    before = digests(root)
    (root / "manifest.json").unlink()
    image = next((root / "train").rglob("*.png"))
    image.write_bytes(b"truncated")
    with pytest.raises(DataError):
        synthetic_split(root, "train")
    assert generate(TINY, tmp_path) == root
    assert digests(root) == before


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    render = synthetic.render

    def render_then_die(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(synthetic, "render", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "render", render)
    assert (generate(TINY, tmp_path) / "manifest.json").is_file()


def test_config_key_cache_root_and_validation(monkeypatch, tmp_path):
    assert SyntheticConfig().key == SyntheticConfig().key != SyntheticConfig(shortcut=0.5).key
    # CLI and YAML spellings of the same config share its cache.
    same = SyntheticConfig(shortcut=1, object_area="0.15,0.45", seed=0.0)
    assert same.key == SyntheticConfig(shortcut=1.0, object_area=[0.15, 0.45]).key
    assert same.object_area == (0.15, 0.45)
    hash(same)  # frozen and hashable, even when given a list
    monkeypatch.setenv("GTASEG_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "synthetic"
    for bad in (dict(num_classes=1), dict(num_classes=21), dict(shortcut=1.5), dict(image_size=16),
                dict(object_area=(0.5, 0.2)), dict(object_area="0.2"), dict(train_per_class=0), dict(seed=0.5),
                dict(seed=-1), dict(shortcut="high"), dict(part_scale=0.1), dict(part_scale=3)):
        with pytest.raises(GtasegError):
            SyntheticConfig(**bad)


def background_family(image: np.ndarray, mask: np.ndarray, num_classes: int) -> int:
    """The tint family read back from the pixels outside the object alone: the hue of their mean colour."""
    r, g, b = (image[mask == 0] / 255).mean(0)
    return round(colorsys.rgb_to_hsv(r, g, b)[0] * num_classes) % num_classes


def test_background_predicts_the_class_in_train_only(stats_root):
    manifest = json.loads((stats_root / "manifest.json").read_text())
    rates = {}
    for split in ("train", "test"):
        s = synthetic_split(stats_root, split)
        recorded = [f for per_class in manifest["background_family"][split] for f in per_class]
        read = [background_family(load(image), load(mask), STATS.num_classes)
                for (image, _), mask in zip(s.samples, s.masks)]
        assert np.mean(np.equal(read, recorded)) >= 0.95  # the statistic really is in the background pixels
        rates[split] = np.mean(np.equal(read, s.targets))
    expected = STATS.shortcut + (1 - STATS.shortcut) / STATS.num_classes
    assert abs(rates["train"] - expected) <= 0.05
    assert abs(rates["test"] - 1 / STATS.num_classes) <= 0.05


def object_features(image: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """Cheap, rotation-invariant cues from the object alone: its dark spots, and how much of it is thin."""
    mask = mask.astype(bool)
    inner = ndimage.binary_erosion(mask, iterations=2)  # off the anti-aliased rim
    value = image.max(axis=2) / 255
    dark = inner & (value < 0.45 * np.median(value[inner]))
    labels, n = ndimage.label(dark)
    areas = np.bincount(labels.ravel())[1:]
    spots = int((areas >= 0.4 * areas.max()).sum()) if n else 0  # the eye's pupil is far smaller than a spot
    # An opening a little wider than a fork's prong erases the prongs but little of a solid fan.
    radius = max(1, round(0.15 * np.sqrt(mask.sum() / 2.8)))  # ~2.8 body units² per object
    thin = mask & ~ndimage.binary_opening(mask, disk(radius))
    return spots, thin.sum() / mask.sum()


def test_object_alone_separates_the_classes(stats_root):
    features = {}
    for split in ("train", "test"):
        s = synthetic_split(stats_root, split)
        features[split] = (np.array([object_features(load(image), load(mask))
                                     for (image, _), mask in zip(s.samples, s.masks)]), np.array(s.targets))
    x, y = features["train"]
    assert np.mean(x[:, 0] == y % synthetic.MAX_SPOTS + 1) >= 0.9  # the spots are drawn and resolvable
    mean, std = x.mean(0), x.std(0)
    centroids = np.stack([((x[y == k] - mean) / std).mean(0) for k in range(STATS.num_classes)])
    x_test, y_test = features["test"]
    distances = (((x_test - mean) / std)[:, None, :] - centroids[None]) ** 2
    assert np.mean(distances.sum(-1).argmin(1) == y_test) >= 0.9  # chance is 0.1


def test_classes_differ_only_in_the_small_parts():
    """The same scene rendered as another class changes only the spots (inside the object) or the tail."""
    cfg = SyntheticConfig()
    for seed in range(6):
        def draw(label):
            return synthetic.render(cfg, label, 0, np.random.default_rng(seed))

        image, mask = draw(0)
        object_area = mask.sum()
        more_spots, same_mask = draw(3)
        changed = (more_spots != image).any(-1)
        assert np.array_equal(same_mask, mask)
        assert changed.any() and not (changed & (mask == 0)).any()
        assert changed.sum() < 0.15 * object_area

        other_tail, tail_mask = draw(5)
        outline_change = tail_mask != mask
        assert 0 < outline_change.sum() < 0.15 * object_area
        near_tail = ndimage.binary_dilation(outline_change, iterations=cfg.image_size // 10)  # and its shadow
        assert not ((other_tail != image).any(-1) & ~near_tail).any()


def test_part_scale_enlarges_only_the_class_parts():
    """The same scene with larger parts: the same spot count, more spot area, longer tail prongs.

    1.3 is the largest scale at which spots never touch, so they can still be counted one by one."""
    for seed in range(4):
        def draw(part_scale):
            return synthetic.render(SyntheticConfig(part_scale=part_scale), 2, 0, np.random.default_rng(seed))

        small, small_mask = draw(1.0)
        large, large_mask = draw(1.3)
        small_spots, small_thin = object_features(small, small_mask)
        large_spots, large_thin = object_features(large, large_mask)
        assert small_spots == large_spots == 3
        dark = [((image.max(-1) < 60) & (mask > 0)).sum() for image, mask in ((small, small_mask), (large, large_mask))]
        assert dark[1] > 1.4 * dark[0]  # spot area grows with the square of the radius (1.3² = 1.69)
        assert large_thin > small_thin  # longer fork prongs: a larger share of the object is thin
