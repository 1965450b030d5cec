"""Helpers shared by the benchmark scripts: timing, the machine's matmul peak, markdown tables and small PNG line
plots (drawn with pillow, so no plotting dependency). The analytic FLOP model is the package's (models/flops.py).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

# ----------------------------------------------------------------------------------------------
# timing


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [x for x in xs if x == x]  # drop NaN
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


# The clock: 'wall' (perf_counter) is what a user sees on an idle machine; 'cpu' (process CPU time) with one
# thread measures the work itself and is robust to other processes sharing the cores (our CI machine).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def set_clock(name: str) -> None:
    global _clock
    _clock = CLOCKS[name]


def timed(fn: Callable[[], object]) -> float:
    t = _clock()
    fn()
    return _clock() - t


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) matmul in `dtype`: this machine's practical peak, measured now
    (the same process, thread count and clock as the step timings, so the fraction is like for like)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (packing, thread pool)
    best = float("inf")
    for _ in range(repeats):
        best = min(best, timed(lambda: _sync(a @ b, device)))
    return 2 * n**3 / best / 1e9


def _sync(x, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return x


def machine_name() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{cpu or platform.machine()}, {n} thread{'s' if n > 1 else ''}, torch {torch.__version__}"


# ----------------------------------------------------------------------------------------------
# reporting


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x):
        if isinstance(x, float):
            if x != x:
                return "-"
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def replace_section(path: Path, begin: str, end: str, text: str, title: str = "") -> None:
    """Replace what lies between the marker lines `begin` and `end` in `path` (append both if absent)."""
    path = Path(path)
    doc = path.read_text() if path.exists() else (f"# {title}\n" if title else "")
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


def line_plot(
    path,
    series: Dict[str, Tuple[Sequence[float], Sequence[float], Optional[Sequence[float]]]],
    title: str,
    xlabel: str,
    ylabel: str,
    size: Tuple[int, int] = (720, 440),
    logy: bool = False,
) -> None:
    """Write a PNG line plot: `series[name] = (xs, ys, stds or None)`; the std is drawn as a light band."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 170, 36, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    f = (lambda y: math.log10(max(y, 1e-12))) if logy else (lambda y: y)
    xs_all = [x for xs, _, _ in series.values() for x in xs]
    ys_all = []
    for _, ys, sd in series.values():
        for i, y in enumerate(ys):
            e = sd[i] if sd is not None else 0.0
            ys_all += [f(max(y - e, 1e-12)) if logy else y - e, f(y + e)]
    ys_all = [y for y in ys_all if y == y and abs(y) != float("inf")]
    if not xs_all or not ys_all:
        img.save(path)
        return
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (f(y) - y0) / (y1 - y0) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):  # ticks
        yv = y0 + (y1 - y0) * i / 5
        _, yy = px(x0, 10**yv if logy else yv)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{10**yv if logy else yv:.3g}", fill="black")
        xv = x0 + (x1 - x0) * i / 5
        xx, _ = px(xv, 10**y0 if logy else y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 12, h - bottom + 8), f"{xv:.4g}", fill="black")
    d.text((left, 10), title, fill="black")
    d.text(((w - right + left) // 2 - 30, h - 20), xlabel, fill="black")
    d.text((4, top - 22), ylabel, fill="black")
    for k, (name, (xs, ys, sd)) in enumerate(series.items()):
        c = _COLOURS[k % len(_COLOURS)]
        if sd is not None and len(xs) > 1:
            band = [px(x, y + e) for x, y, e in zip(xs, ys, sd)] + [px(x, max(y - e, 1e-12) if logy else y - e) for x, y, e in reversed(list(zip(xs, ys, sd)))]
            light = tuple(int(v + (255 - v) * 0.75) for v in c)
            d.polygon(band, fill=light)
    for k, (name, (xs, ys, sd)) in enumerate(series.items()):
        c = _COLOURS[k % len(_COLOURS)]
        pts = [px(x, y) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for p in pts if len(pts) <= 30 else ():  # markers only on sparse series
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=c)
        ly = top + 8 + 18 * k
        d.line([w - right + 10, ly + 6, w - right + 30, ly + 6], fill=c, width=3)
        d.text((w - right + 36, ly), name, fill="black")
    img.save(path)
