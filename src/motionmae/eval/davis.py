"""DAVIS-2017 layout (frames, palette-PNG masks, image sets) and the J / F metrics.

The metrics follow davis2017-evaluation (semi-supervised task) exactly, without its OpenCV /
scikit-image dependencies:
- J: region IoU; an empty ground truth with an empty prediction scores 1.
- F: boundary F-measure. Boundaries are `seg2bmap` maps (a pixel is on the boundary when it differs
  from its east, south or south-east neighbour); a boundary pixel is matched when the other mask's
  boundary lies within a disk of radius ceil(bound_th * image diagonal) pixels (bound_th=0.008).
- Per object: mean over the frames excluding the first and the last; recall = fraction of those
  frames > 0.5; decay = mean of the first quarter minus mean of the last quarter.
- J&F-Mean = (mean over objects of J-Mean + mean over objects of F-Mean) / 2.
Annotation value 255 ("void") is background for the scores, which is what davis2017-evaluation computes: its
loader sets 255 to 0 before the metrics look for void pixels, so their `void_pixels` argument is never used
(`region_similarity` / `boundary_f_measure` keep that argument, as the official functions do).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from motionmae.data.palette import davis_palette, read_mask, write_mask  # noqa: F401  (the PNG format, shared with data)
from motionmae.errors import UserError

VOID = 255
BOUND_TH = 0.008


def read_frames(paths: Sequence) -> np.ndarray:
    """JPEG frames -> uint8 (T, H, W, 3)."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise UserError(f"{p}: cannot read frame: {e}") from None
        if out[-1].shape != out[0].shape:
            raise UserError(f"{p}: frame size {out[-1].shape[:2]} differs from the first frame's {out[0].shape[:2]}")
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# the DAVIS-2017 layout


@dataclass
class DavisSequence:
    name: str
    frames: List[Path]  # JPEGImages/480p/<name>/*.jpg, sorted
    annotations: List[Optional[Path]]  # Annotations/480p/<name>/<stem>.png per frame, None where absent

    @property
    def fully_annotated(self) -> bool:
        return all(a is not None for a in self.annotations)


def list_sequences(root, split: str = "val", resolution: str = "480p") -> List[DavisSequence]:
    """Sequences of `ImageSets/2017/<split>.txt` under a DAVIS-2017 root."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"DAVIS root not found: {root}")
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "2017").glob("*.txt"))
        raise UserError(f"{listing}: split file not found" + (f"; splits present: {', '.join(have)}" if have else ""))
    seqs = []
    for lineno, line in enumerate(listing.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        fdir = root / "JPEGImages" / resolution / name
        adir = root / "Annotations" / resolution / name
        frames = sorted(fdir.glob("*.jpg"))
        if not frames:
            raise UserError(f"{listing}:{lineno}: sequence '{name}' has no frames in {fdir}")
        annots = [adir / f"{f.stem}.png" for f in frames]
        annots = [a if a.is_file() else None for a in annots]
        if annots[0] is None:
            raise UserError(f"{listing}:{lineno}: sequence '{name}' has no first-frame annotation {adir / (frames[0].stem + '.png')}")
        seqs.append(DavisSequence(name, frames, annots))
    if not seqs:
        raise UserError(f"{listing}: no sequences listed")
    return seqs


def num_objects(first_mask: np.ndarray) -> int:
    """DAVIS: objects are 1..max index of the first frame's annotation (void excluded)."""
    m = first_mask[first_mask != VOID]
    return int(m.max()) if m.size else 0


# ----------------------------------------------------------------------------------------------
# metrics


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """J: IoU of two binary masks (H, W), void pixels ignored; both empty -> 1."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = ~void.astype(bool) if void is not None else np.ones_like(gt)
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    return 1.0 if union == 0 else inter / union


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binary mask: pixels differing from their E, S or SE neighbour.

    The image border itself is not a boundary (the last row / column compare along the border only).
    """
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = x[y - dy, x - dx], zero outside."""
    h, w = x.shape
    out = np.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def dilate_disk(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk {x^2 + y^2 <= r^2} (skimage `disk`), outside the image counts as empty.

    The disk is a stack of horizontal runs: row dy spans |dx| <= isqrt(r^2 - dy^2). The horizontal
    dilations for every half-width are built incrementally, then OR-ed with vertical shifts: O(r) passes.
    """
    b = b.astype(bool)
    r = int(radius)
    if r <= 0:
        return b.copy()
    runs = [b]
    for w in range(1, r + 1):
        runs.append(runs[-1] | _shift(b, 0, w) | _shift(b, 0, -w))
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        out |= _shift(runs[math.isqrt(r * r - dy * dy)], dy, 0)
    return out


def boundary_radius(shape: Tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance in pixels: bound_th itself when >= 1, else ceil(bound_th * image diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None, bound_th: float = BOUND_TH) -> float:
    """F: boundary F-measure of two binary masks (H, W) (davis2017-evaluation `f_measure`)."""
    keep = ~void.astype(bool) if void is not None else True
    pred_b = seg2bmap(pred.astype(bool) & keep)
    gt_b = seg2bmap(gt.astype(bool) & keep)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision or recall is 0 (the other is 1)
    r = boundary_radius(gt.shape, bound_th)
    # dilation only matters near the boundaries: work in their joint bounding box grown by r
    ys, xs = np.nonzero(pred_b | gt_b)
    y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, gt.shape[0])
    x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, gt.shape[1])
    pred_b, gt_b = pred_b[y0:y1, x0:x1], gt_b[y0:y1, x0:x1]
    precision = np.count_nonzero(pred_b & dilate_disk(gt_b, r)) / n_pred
    recall = np.count_nonzero(gt_b & dilate_disk(pred_b, r)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values: np.ndarray) -> Tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, NaNs ignored (davis2017-evaluation `db_statistics`)."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values)) if values.size else float("nan")
        recall = float(np.nanmean(values > 0.5)) if values.size else float("nan")
        # the official code casts these bin edges to uint8 (wrong above 256 frames; DAVIS sequences have <= 104)
        ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3])) if values.size else float("nan")
    return mean, recall, decay


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, n_objects: int, bound_th: float = BOUND_TH) -> Tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F, each (n_objects, T - 2): frames 1 .. T-2 (first and last excluded).

    `gt`, `pred`: uint8 (T, H, W) object indices; 255 in `gt` (void) counts as background, as in davis2017-evaluation.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    gt, pred = gt[1:-1], pred[1:-1]
    j = np.zeros((n_objects, len(gt)))
    f = np.zeros((n_objects, len(gt)))
    for t in range(len(gt)):
        for k in range(n_objects):
            g, p = gt[t] == k + 1, pred[t] == k + 1
            j[k, t] = region_similarity(g, p)
            f[k, t] = boundary_f_measure(g, p, bound_th=bound_th)
    return j, f


def summarize(per_object: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> Tuple[dict, List[dict]]:
    """`{"<seq>_<id>": (J frames, F frames)}` -> (global dict, per-object rows), davis2017-evaluation's tables."""
    rows, stats = [], {"J": [], "F": []}
    for name, (j, f) in per_object.items():
        sj, sf = statistics(j), statistics(f)
        stats["J"].append(sj)
        stats["F"].append(sf)
        rows.append({"Sequence": name, "J-Mean": sj[0], "F-Mean": sf[0]})
    if not rows:
        raise UserError("no objects to evaluate")
    J, F = np.array(stats["J"]), np.array(stats["F"])
    glob = {
        "J&F-Mean": (J[:, 0].mean() + F[:, 0].mean()) / 2,
        "J-Mean": J[:, 0].mean(), "J-Recall": J[:, 1].mean(), "J-Decay": J[:, 2].mean(),
        "F-Mean": F[:, 0].mean(), "F-Recall": F[:, 1].mean(), "F-Decay": F[:, 2].mean(),
    }
    return {k: float(v) for k, v in glob.items()}, rows
