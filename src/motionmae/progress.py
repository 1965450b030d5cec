"""A progress bar on stderr for anything longer than a few seconds (training, feature extraction, make-dataset,
make-shards): one line rewritten in place on a terminal, one line per update in a log file. It sits below every
layer (it imports nothing of motionmae), so data tools can show progress too.
"""

from __future__ import annotations

import math
import sys
import time


class ProgressBar:
    """One stderr line, rewritten in place on a terminal (`\\r`); one line per update otherwise (log files).

    `update(step, loss=..., lr=..., ...)` shows `desc [bar] step/total  k=v ...  ETA`.
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True, stream=None, initial: int = 0):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0, self.step0 = time.perf_counter(), initial
        self._open = False

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = max(step - self.step0, 0)
        eta = elapsed / done * (self.total - step) if done else float("nan")
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        line = f"{self.desc} [{bar}] {step}/{self.total} {text} eta {_fmt_time(eta)}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def write(self, message: str) -> None:
        """Print a message without breaking the bar."""
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        self.stream.flush()


def _fmt(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.4f}"
    return str(v)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
