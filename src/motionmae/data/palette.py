"""Palette PNGs of object indices (DAVIS annotations and predicted masks): read, write, the DAVIS colour map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from motionmae.errors import UserError


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, (256, 3) uint8: index i -> colour from the bits of i."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def read_mask(path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A palette (or grey) PNG -> (indices uint8 (H, W), palette uint8 (256, 3) or None for grey)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                raw = im.getpalette() or []
                pal = np.zeros((256, 3), dtype=np.uint8)
                raw = np.asarray(raw[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
                pal[: len(raw)] = raw
                return np.array(im, dtype=np.uint8), pal
            if im.mode == "L":
                return np.array(im, dtype=np.uint8), None
            mode = im.mode
    except OSError as e:
        raise UserError(f"{path}: cannot read mask: {e}") from None
    raise UserError(f"{path}: expected a palette ('P') or grey ('L') PNG of object indices, got mode '{mode}'")


def write_mask(path, mask: np.ndarray, palette: Optional[np.ndarray] = None) -> None:
    """Write object indices (H, W) as a palette PNG (default: the DAVIS palette)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    pal = davis_palette() if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    full = np.zeros((256, 3), dtype=np.uint8)  # always 256 entries, so the PNG stays 8-bit and the palette round-trips
    full[: len(pal)] = pal[:256]
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    im.putpalette(full.reshape(-1).tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
