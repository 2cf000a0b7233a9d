"""Reading images from datasets scraped together by hand: any mode in, RGB out, one-line errors."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from gtaseg.errors import DataError


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as 8-bit RGB (grayscale, palette, CMYK, RGBA and 16-bit images are converted)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # PIL's RGB conversion clips 16-bit values at 255; rescale the full range instead.
                arr = np.asarray(img, dtype=np.float64)
                hi = arr.max() or 1.0
                img = Image.fromarray((arr * (255.0 / hi)).round().astype(np.uint8))
            elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Transparent pixels over black are what most viewers show; keep that, drop alpha.
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(bg, img)
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
