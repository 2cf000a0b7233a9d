"""A procedural fine-grained dataset with a background shortcut: the default benchmark of ``gtaseg train``.

Every image shows one "critter" (a shaded oval body, a head with an eye and a tail) on a cluttered, tinted
background. All classes share the body plan and colour distribution; a class is fixed only by two small parts:
the number of dark spots on the back (1-5, laid out like dice pips) and the shape of the tail (fork, fan,
spike, round). The class-correlated shortcut (``cue``) is either the background tint (``tint``: a global cue that
every token carries) or a small class-specific glyph in the background, away from the object (``glyph``: a
localised cue that only attention on the background can pick up). In the train split the cue follows the class
with probability ``shortcut``; in the validation and test splits it is independent of the class. See
``data/SYNTHETIC.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gtaseg.data.split import Split
from gtaseg.errors import DataError, GtasegError
from gtaseg.io import write_json

# Bump whenever a change alters the pixels, so stale caches are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "test", "val")  # indices are RNG stream keys: append only
CUES = ("tint", "glyph")
TAILS = ("fork", "fan", "spike", "round")
MAX_SPOTS = 5
MAX_CLASSES = MAX_SPOTS * len(TAILS)

# Dice-pip layouts in body units (the body is an ellipse with semi-axes 1 x ~0.72); they stay clear of the rim
# and of the head so a spot is never cut.
_SPOT_LAYOUTS = {
    1: [(-0.08, 0.0)],
    2: [(-0.4, 0.2), (0.24, -0.2)],
    3: [(-0.46, 0.24), (-0.08, 0.0), (0.3, -0.24)],
    4: [(-0.38, -0.24), (-0.38, 0.24), (0.22, -0.24), (0.22, 0.24)],
    5: [(-0.44, -0.27), (-0.44, 0.27), (-0.08, 0.0), (0.28, -0.27), (0.28, 0.27)],
}
_SPOT_RADIUS = 0.13
_TAIL_ROOT = -0.88  # body-frame u where the tail leaves the body
_LIGHT = np.array([-0.5, -0.6, 0.62])  # image frame (x right, y down, z to the viewer): lit from the top left


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of one synthetic dataset; every field enters the cache key.

    ``shortcut`` is the probability that a train image's background tint is its class's own tint; otherwise the
    tint is drawn independently of the class, as it always is in test. So 0 means no shortcut, and the train
    tint matches the class at rate ``shortcut + (1 - shortcut) / num_classes``.
    ``object_area`` is the range of the object's target share of the image area (large objects are shrunk to fit
    the frame whole, so the largest are rarer). ``clutter`` is the mean number of distractor shapes per image.
    ``part_scale`` multiplies the spot radius and the tail length, so it sets how visible the class cue is.
    Above about 1.3 neighbouring spots can touch. ``val_per_class`` images per class form a validation split
    drawn like test (0: no validation split). ``cue`` picks the shortcut: ``tint`` (the background's hue family)
    or ``glyph`` (a flat class-specific shape of side ``cue_size`` × the image, pasted where it does not overlap
    the object; the tint is then independent of the class in every split).
    """

    num_classes: int = 10
    train_per_class: int = 40
    test_per_class: int = 20
    image_size: int = 112
    shortcut: float = 0.9
    seed: int = 0
    object_area: tuple[float, float] = (0.15, 0.45)
    clutter: int = 8
    part_scale: float = 1.0
    val_per_class: int = 0
    cue: str = "tint"
    cue_size: float = 0.2

    def __post_init__(self) -> None:
        # Values also arrive as CLI strings ("object_area=0.2,0.4"), YAML lists and ints for floats: normalise them
        # so that equal configs share one cache key.
        for name in ("num_classes", "train_per_class", "test_per_class", "image_size", "seed", "clutter",
                     "val_per_class"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise GtasegError(f"synthetic {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, value)
        area = self.object_area.split(",") if isinstance(self.object_area, str) else self.object_area
        try:
            object.__setattr__(self, "shortcut", float(self.shortcut))
            object.__setattr__(self, "part_scale", float(self.part_scale))
            object.__setattr__(self, "cue_size", float(self.cue_size))
            object.__setattr__(self, "object_area", tuple(float(x) for x in area))
        except (TypeError, ValueError) as e:
            raise GtasegError(f"synthetic shortcut and object_area must be numbers ({e})") from e
        if len(self.object_area) != 2:
            raise GtasegError(f"synthetic object_area must be (low, high), got {self.object_area}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise GtasegError(f"synthetic num_classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise GtasegError("synthetic train_per_class and test_per_class must be at least 1")
        if self.image_size < 48:
            raise GtasegError(f"synthetic image_size must be >= 48 (the spots vanish below), got {self.image_size}")
        if not 0.0 <= self.shortcut <= 1.0:
            raise GtasegError(f"synthetic shortcut must be a probability, got {self.shortcut}")
        lo, hi = self.object_area
        if not 0.02 <= lo <= hi <= 0.6:
            raise GtasegError(f"synthetic object_area must satisfy 0.02 <= low <= high <= 0.6, got {self.object_area}")
        if not 0.25 <= self.part_scale <= 2.0:
            raise GtasegError(f"synthetic part_scale must be in [0.25, 2], got {self.part_scale}")
        if self.clutter < 0 or self.seed < 0 or self.val_per_class < 0:
            raise GtasegError(f"synthetic clutter, seed and val_per_class must be >= 0, got {self.clutter}, "
                              f"{self.seed} and {self.val_per_class}")
        if self.cue not in CUES:
            raise GtasegError(f"synthetic cue must be one of {', '.join(CUES)}, got {self.cue!r}")
        if not 0.05 <= self.cue_size <= 0.4:
            raise GtasegError(f"synthetic cue_size must be in [0.05, 0.4], got {self.cue_size}")

    @classmethod
    def from_options(cls, options: dict) -> SyntheticConfig:
        """The config from ``--synthetic KEY=VALUE`` pairs or a YAML mapping; an unknown key is a one-line error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise GtasegError(f"unknown synthetic option {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**options)

    @property
    def classes(self) -> list[str]:
        return [f"c{k:02d}_{k % MAX_SPOTS + 1}spot_{TAILS[k // MAX_SPOTS]}" for k in range(self.num_classes)]

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.val_per_class else SPLITS[:2]

    def per_class(self, split: str) -> int:
        return getattr(self, f"{split}_per_class")

    @property
    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_root() -> Path:
    return Path(os.environ.get("GTASEG_CACHE") or Path.home() / ".cache" / "gtaseg") / "synthetic"


def generate(cfg: SyntheticConfig, root: str | os.PathLike | None = None) -> Path:
    """The dataset directory ``root/<cfg.key>``, generated unless a complete one (with its manifest) is there.

    Images are written to a private temporary directory that is renamed into place only after its manifest is
    written, so concurrent callers never see (or clobber) a half-written dataset.
    """
    root = Path(root) if root is not None else default_cache_root()
    final = root / cfg.key
    if _is_complete(final, cfg):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{cfg.key}.", suffix=".partial"))
    try:
        drawn = {split: _write_split(cfg, tmp, split) for split in cfg.splits}
        write_json(tmp / "manifest.json", {
            "generator_version": GENERATOR_VERSION,
            "key": cfg.key,
            "config": asdict(cfg),
            "classes": cfg.classes,
            "counts": {split: cfg.num_classes * cfg.per_class(split) for split in cfg.splits},
            # background_family[split][label][i]: the tint family of image i of class `label`; cue_class likewise
            # the class whose glyph it shows (cue "glyph" only), for shortcut analysis
            "background_family": {split: families for split, (families, _) in drawn.items()},
            **({"cue_class": {split: glyphs for split, (_, glyphs) in drawn.items()}} if cfg.cue == "glyph" else {}),
        })
        if final.exists() and not _is_complete(final, cfg):
            shutil.rmtree(final)  # an interrupted or stale dataset
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final, cfg):  # not merely another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_options(data: str, synthetic_options: dict) -> None:
    """``--synthetic``'s options are valid (only ``--data synthetic`` reads them), before anything is generated."""
    if data == "synthetic":
        SyntheticConfig.from_options(synthetic_options)


def synthetic_root(data: str, synthetic_options: dict) -> Path | None:
    """The dataset directory ``--data synthetic`` with these ``--synthetic`` options reads (generated on first
    use, see :func:`generate`); None for any other ``data``."""
    if data != "synthetic":
        return None
    return generate(SyntheticConfig.from_options(synthetic_options))


def synthetic_split(root: str | os.PathLike, split: str) -> Split:
    """The ``split`` ("train", "test" or, when generated, "val") of the dataset that :func:`generate` returned,
    with its object masks."""
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{root}: not a complete synthetic dataset ({e}); generate it again") from e
    per_class = manifest["config"].get(f"{split}_per_class", 0)
    if not per_class:
        raise DataError(f"{root}: this synthetic dataset has no {split} split (generate it with "
                        f"--synthetic {split}_per_class=N)")
    samples, masks = [], []
    for label, name in enumerate(manifest["classes"]):
        for i in range(per_class):
            samples.append((str(root / split / name / f"{i:04d}.png"), label))
            masks.append(str(root / "masks" / split / name / f"{i:04d}.png"))
    return Split(samples=samples, classes=list(manifest["classes"]), masks=masks)


def cue_mask_paths(split: Split) -> list[str] | None:
    """The glyph masks of a synthetic split's images (``cue_masks/`` beside the images), or None when the data
    has no localised cue."""
    if not split.samples:
        return None
    paths = []
    for image, _ in split.samples:
        image = Path(image)
        root, rel = image.parents[2], image.relative_to(image.parents[2])
        paths.append(root / "cue_masks" / rel)
    return [str(p) for p in paths] if paths[0].is_file() else None


def _is_complete(path: Path, cfg: SyntheticConfig) -> bool:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("key") == cfg.key and manifest.get("generator_version") == GENERATOR_VERSION


def _rng(cfg: SyntheticConfig, stream: int, split: str, label: int, index: int) -> np.random.Generator:
    # A fixed-length key per image: any one image can be reproduced alone, and streams never alias.
    return np.random.default_rng([cfg.seed, stream, SPLITS.index(split), label, index])


def _cue_classes(cfg: SyntheticConfig, split: str, label: int, stream: int, shortcut: float) -> list[int]:
    """Which class's cue each image of (split, label) shows: its own in a ``shortcut`` share of train images."""
    n, count = cfg.num_classes, cfg.per_class(split)
    rng = _rng(cfg, stream, split, label, 0)
    # Independent cues are drawn balanced (each class's cue equally often, up to rounding), so the validation and
    # test splits have no chance correlation with the class either.
    cues = (np.arange(count) + rng.integers(n)) % n
    rng.shuffle(cues)
    if split == "train":
        own = rng.permutation(count)[: round(shortcut * count)]
        cues[own] = label
    return [int(c) for c in cues]


def _write_split(cfg: SyntheticConfig, root: Path, split: str) -> tuple[list[list[int]], list[list[int]]]:
    """Write one split; returns per class the images' tint families and (cue "glyph") glyph classes."""
    backgrounds, glyphs = [], []
    for label, name in enumerate(cfg.classes):
        (root / split / name).mkdir(parents=True)
        (root / "masks" / split / name).mkdir(parents=True)
        if cfg.cue == "tint":
            families, cues = _cue_classes(cfg, split, label, 0, cfg.shortcut), []
        else:  # the tint is drawn as an uncorrelated test tint is; stream 2 keeps it apart from the glyphs'
            families, cues = _cue_classes(cfg, split, label, 2, 0.0), _cue_classes(cfg, split, label, 0, cfg.shortcut)
            (root / "cue_masks" / split / name).mkdir(parents=True)
        for i, family in enumerate(families):
            rng = _rng(cfg, 1, split, label, i)
            image, mask = render(cfg, label, family, rng)
            if cues:
                image, cue_mask = paste_glyph(cfg, image, mask, cues[i], rng)
                Image.fromarray(cue_mask).save(root / "cue_masks" / split / name / f"{i:04d}.png")
            Image.fromarray(image).save(root / split / name / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / name / f"{i:04d}.png")
        backgrounds.append(families)
        glyphs.append(cues)
    return backgrounds, glyphs


GLYPH_SHAPES = ("disc", "square", "triangle", "cross", "diamond")


def glyph_look(cfg: SyntheticConfig, cue: int) -> tuple[str, np.ndarray]:
    """Class ``cue``'s glyph: a shape and a saturated colour, both fixed by the class, so either one alone
    identifies it (distinct hues up to 20 classes; shapes repeat every five)."""
    hue = (cue * 0.381966) % 1.0  # golden-ratio steps keep neighbouring classes' hues far apart
    return GLYPH_SHAPES[cue % len(GLYPH_SHAPES)], _hsv(hue, 0.9, 0.95)


def paste_glyph(cfg: SyntheticConfig, image: np.ndarray, mask: np.ndarray, cue: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Paste class ``cue``'s flat glyph onto the background of ``image``, clear of the object ``mask``.

    The glyph goes where its box keeps a margin from the object; among the positions that do, one is drawn at
    random (when none does, the least overlapping one, and the object stays on top). Returns the image and the
    glyph's 0/1 mask (object pixels excluded), which measures attention mass on the cue.
    """
    size = cfg.image_size
    side = int(round(cfg.cue_size * size * rng.uniform(0.9, 1.1)))
    margin = max(2, size // 40)
    grown = np.asarray(Image.fromarray(mask * 255).filter(ImageFilter.MaxFilter(2 * margin + 1))) > 0
    # Overlap of every box position with the grown object, by a summed-area table.
    table = np.pad(grown.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    free = size - side + 1
    overlap = table[side:, side:] - table[:free, side:] - table[side:, :free] + table[:free, :free]
    candidates = np.argwhere(overlap == overlap.min())
    y, x = candidates[rng.integers(len(candidates))]
    shape, colour = glyph_look(cfg, cue)
    big = 4 * side  # drawn large and box-filtered down, for smooth edges
    layer = Image.new("L", (big, big))
    draw = ImageDraw.Draw(layer)
    c, r = big / 2, big / 2 - 1
    if shape == "disc":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        draw.rectangle([c - 0.85 * r, c - 0.85 * r, c + 0.85 * r, c + 0.85 * r], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c + r, c + 0.8 * r), (c - r, c + 0.8 * r)], fill=255)
    elif shape == "cross":
        w = 0.35 * r
        draw.rectangle([c - r, c - w, c + r, c + w], fill=255)
        draw.rectangle([c - w, c - r, c + w, c + r], fill=255)
    else:  # diamond
        draw.polygon([(c, c - r), (c + r, c), (c, c + r), (c - r, c)], fill=255)
    alpha = np.zeros((size, size))
    alpha[y:y + side, x:x + side] = np.asarray(layer.resize((side, side), Image.BOX), dtype=np.float64) / 255
    alpha *= 1 - mask  # the object stays on top
    out = image * (1 - alpha[..., None]) + colour * 255 * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), (alpha >= 0.5).astype(np.uint8)


def render(cfg: SyntheticConfig, label: int, family: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (H x W x 3 uint8) of class ``label`` on a background of tint ``family``, and its 0/1 mask.

    The label is used only after every other random draw, so the same ``rng`` state rendered with two labels
    gives the same scene and critter, differing only in the spots and the tail: a controlled counterfactual.
    """
    tint = (family + rng.uniform(-0.2, 0.2)) / cfg.num_classes
    canvas = _background(cfg, tint, rng)
    noise = rng.normal(0.0, 0.015, canvas.shape)  # sensor noise, so no region is perfectly flat
    canvas, coverage = _draw_critter(cfg, canvas, label, rng)
    return np.clip((canvas + noise) * 255 + 0.5, 0, 255).astype(np.uint8), (coverage >= 0.5).astype(np.uint8)


def _hsv(h: np.ndarray | float, s: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """HSV (each in [0, 1], broadcast together) to RGB in a trailing axis; far cheaper than a general converter."""
    h, s, v = (np.asarray(c, dtype=np.float64)[..., None] for c in (h, s, v))
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid, bicubically upsampled."""
    grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32))
    return np.clip(np.asarray(grid.resize((size, size), Image.BICUBIC)), 0, 1)


def _background(cfg: SyntheticConfig, tint: float, rng: np.random.Generator) -> np.ndarray:
    """Float RGB in [0, 1]: gradient + blotches + a texture family + distractor shapes, all in the tint's hue.

    Every element shares the tint's hue (or is grey), so the tint is a clean global statistic, while the
    texture family, gradient and clutter vary independently of the class.
    """
    size = cfg.image_size
    y, x = np.mgrid[0:size, 0:size] / size
    phi = rng.uniform(0, 2 * np.pi)
    value = 0.55 + rng.uniform(0.1, 0.35) * ((x - 0.5) * np.cos(phi) + (y - 0.5) * np.sin(phi))
    value += rng.uniform(0.15, 0.35) * (_smooth_noise(rng, int(rng.integers(3, 7)), size) - 0.5)
    texture = rng.integers(4)
    psi, freq = rng.uniform(0, np.pi), rng.uniform(5, 14)
    wave = np.sin(2 * np.pi * freq * (x * np.cos(psi) + y * np.sin(psi)))
    if texture == 0:  # stripes
        value += 0.08 * wave
    elif texture == 1:  # checks
        value += 0.07 * np.sign(wave * np.sin(2 * np.pi * freq * (-x * np.sin(psi) + y * np.cos(psi))))
    elif texture == 2:  # grain
        value += 0.2 * (_smooth_noise(rng, size // 3, size) - 0.5)
    # texture 3: plain, only the gradient and blotches
    hue = tint + 0.04 * (_smooth_noise(rng, 4, size) - 0.5)
    sat = np.clip(rng.uniform(0.3, 0.55) + 0.2 * (_smooth_noise(rng, 5, size) - 0.5), 0, 1)
    rgb = _hsv(hue, sat, np.clip(value, 0.08, 0.95))

    # Distractors are drawn at twice the size and box-filtered down, for smooth edges.
    big = 2 * size
    layer = Image.new("RGBA", (big, big))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.poisson(cfg.clutter)):
        grey = rng.random() < 0.25
        colour = _hsv(tint + rng.uniform(-0.04, 0.04), 0.0 if grey else rng.uniform(0.15, 0.7), rng.uniform(0.15, 0.95))
        fill = (*(int(c * 255) for c in colour), 255)
        cx, cy = rng.uniform(0, big, 2)
        r = rng.uniform(0.04, 0.18) * big
        kind = rng.integers(5)
        if kind == 0:  # polygon
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            radii = r * rng.uniform(0.5, 1.0, len(angles))
            draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)], fill=fill)
        elif kind == 1:  # rectangle
            w, h = r * rng.uniform(0.4, 1.2, 2)
            draw.rectangle([cx - w, cy - h, cx + w, cy + h], fill=fill)
        elif kind == 2:  # thick line
            a = rng.uniform(0, np.pi)
            dx, dy = 1.5 * r * np.cos(a), 1.5 * r * np.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=max(2, int(r * rng.uniform(0.1, 0.3))))
        elif kind == 3:  # ring
            draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], outline=fill, width=max(2, int(r * 0.25)))
        else:  # flat disc
            w, h = r * rng.uniform(0.3, 0.9, 2)
            draw.ellipse([cx - w, cy - h, cx + w, cy + h], fill=fill)
    layer = np.asarray(layer.resize((size, size), Image.BOX), dtype=np.float64) / 255
    alpha = layer[..., 3:]
    return rgb * (1 - alpha) + layer[..., :3] * alpha


def _ellipse_sdf(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside), good near the rim."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    k1 = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-9
    return k0 * (k0 - 1.0) / k1


def _tail_sdf(kind: str, t: np.ndarray, s: np.ndarray, length: float) -> np.ndarray:
    """Signed distance (approximate) of a tail pointing along +t from its root at t = 0."""
    if kind == "fork":  # two slender lobes with a V notch between them
        lobes = []
        for sign in (1.0, -1.0):
            a = 0.55 * sign
            tr, sr = t * np.cos(a) + s * np.sin(a), -t * np.sin(a) + s * np.cos(a)
            lobes.append(_ellipse_sdf(tr - 0.5 * length, sr, 0.55 * length, 0.12))
        return np.minimum(*lobes)
    if kind == "fan":  # a solid wedge widening to a straight edge
        return np.maximum((np.abs(s) - 0.1 - 0.7 * t) / np.hypot(1, 0.7), t - length)
    if kind == "spike":  # a long narrow point
        taper = 0.2 / (1.25 * length)
        return np.maximum((np.abs(s) - 0.2 + taper * t) / np.hypot(1, taper), -t - 0.2)
    # round: a bulb on a short stalk
    return np.minimum(np.hypot(t - 0.62 * length, s) - 0.27, np.maximum(np.abs(s) - 0.1, t - 0.5 * length))


def _draw_critter(cfg: SyntheticConfig, canvas: np.ndarray, label: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Composite the class's critter onto ``canvas``; also return its coverage (0..1 per pixel)."""
    size = cfg.image_size
    spots, tail = label % MAX_SPOTS + 1, TAILS[label // MAX_SPOTS]
    # Class-independent body-plan jitter.
    width = rng.uniform(0.66, 0.78)
    head_x, head_r = rng.uniform(0.88, 0.98), rng.uniform(0.36, 0.44)
    tail_len = rng.uniform(0.55, 0.7) * cfg.part_scale

    # Placement: sample a target area and orientation, shrink only if the rotated outline cannot fit the frame.
    a = np.linspace(0, 2 * np.pi, 48)
    outline = np.concatenate([
        np.stack([np.cos(a), width * np.sin(a)], 1),
        np.stack([head_x + head_r * np.cos(a), head_r * np.sin(a)], 1),
        [[_TAIL_ROOT - 1.25 * tail_len - 0.05, -0.6], [_TAIL_ROOT - 1.25 * tail_len - 0.05, 0.6]],  # any tail
    ])
    area_units = np.pi * width + 0.45 * np.pi * head_r**2 + 0.35 * tail_len  # body + visible head and tail
    scale = np.sqrt(rng.uniform(*cfg.object_area) * size * size / area_units)
    for _ in range(8):
        theta = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        pts = outline @ rot.T
        extent = pts.max(0) - pts.min(0)
        if (extent * scale).max() <= size - 4:
            break
    scale = min(scale, (size - 4) / extent.max())
    lo, hi = -pts.min(0) * scale + 2, size - pts.max(0) * scale - 2
    cx, cy = rng.uniform(lo, np.maximum(lo, hi))
    flip = rng.choice([-1.0, 1.0])

    y, x = np.mgrid[0:size, 0:size] + 0.5
    u = ((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)) / scale
    v = flip * (-(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)) / scale
    px = 1.0 / scale  # one pixel in body units: the width of the anti-aliased edge

    def cover(sdf: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - sdf / px, 0.0, 1.0)

    # The light expressed in the body frame, so shading stays fixed in the image as the critter turns.
    lx, ly, lz = _LIGHT / np.linalg.norm(_LIGHT)
    light = np.array([lx * np.cos(theta) + ly * np.sin(theta), flip * (-lx * np.sin(theta) + ly * np.cos(theta)), lz])

    def dome(du: np.ndarray, dv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lambert + specular shading of a dome whose rim is where du^2 + dv^2 = 1."""
        nz = np.sqrt(np.clip(1 - du**2 - dv**2, 0, 1))
        n = np.stack([du, dv, nz + 0.35]) / np.sqrt(du**2 + dv**2 + (nz + 0.35) ** 2)
        lam = np.clip(np.tensordot(light, n, 1), 0, 1)
        return 0.5 + 0.55 * lam, 0.35 * lam**24

    hue = rng.random()
    base = _hsv(hue, rng.uniform(0.55, 0.85), rng.uniform(0.7, 0.95))
    dark = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.6, 0.9), rng.uniform(0.1, 0.2))
    mottle = 1 + 0.08 * (_smooth_noise(rng, 10, size) - 0.5)

    body = cover(_ellipse_sdf(u, v, 1.0, width))
    head = cover(np.hypot(u - head_x, v) - head_r)
    tail_part = cover(_tail_sdf(tail, _TAIL_ROOT - u, v, tail_len))
    silhouette = np.maximum.reduce([body, head, tail_part])

    # A soft drop shadow, cast down-right (away from the light), grounds the critter in the scene.
    dx, dy = np.round(-_LIGHT[:2] / np.abs(_LIGHT[:2]).max() * 0.06 * scale).astype(int)
    shadow = np.zeros_like(silhouette)
    shadow[dy:, dx:] = silhouette[: size - dy, : size - dx]
    shadow = Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(0.05 * scale)))
    shadow = np.asarray(shadow, dtype=np.float64) / 255
    out = canvas * (1 - 0.45 * shadow[..., None])

    def paint(out: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
        return out * (1 - alpha[..., None]) + colour * alpha[..., None]

    tail_shade = 0.75 + 0.15 * np.clip((u - _TAIL_ROOT) / tail_len + 1, 0, 1)
    out = paint(out, tail_part, base * (tail_shade * mottle)[..., None])
    shade, spec = dome(u, v / width)
    skin = base * (shade * mottle)[..., None] + spec[..., None]
    out = paint(out, body, skin)
    spot_sdf = np.full_like(u, np.inf)
    for su, sv in _SPOT_LAYOUTS[spots]:
        su, sv = su + rng.uniform(-0.04, 0.04), sv * width / 0.72 + rng.uniform(-0.03, 0.03)
        spot_sdf = np.minimum(spot_sdf, np.hypot(u - su, v - sv) - _SPOT_RADIUS * cfg.part_scale * rng.uniform(0.9, 1.1))
    out = paint(out, cover(spot_sdf) * body, dark * shade[..., None] + spec[..., None])
    shade, spec = dome((u - head_x) / head_r, v / head_r)
    out = paint(out, head, base * (0.92 * shade * mottle)[..., None] + spec[..., None])
    eye_u, eye_v = head_x + 0.45 * head_r, 0.35 * head_r
    out = paint(out, cover(np.hypot(u - eye_u, v - eye_v) - 0.11), np.array([0.95, 0.95, 0.92]))
    out = paint(out, cover(np.hypot(u - eye_u - 0.03, v - eye_v) - 0.055), np.array([0.05, 0.05, 0.05]))
    return out, silhouette
