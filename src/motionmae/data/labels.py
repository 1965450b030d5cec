"""Label columns of a video list: their names (from `labels.json` beside the list or a `# path name ...` header),
class names, and which column a `label_column` setting means."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from motionmae.errors import UserError


def _labels_json(source: str) -> dict:
    """`labels.json` beside a list (written by `motionmae make-dataset`): {"columns": [...], <column>: [class names]}."""
    p = Path(source)
    meta = (p.parent if p.is_file() else p) / "labels.json"
    try:
        return json.loads(meta.read_text()) if meta.is_file() else {}
    except ValueError:
        return {}


def label_names(source: str, num_labels: int) -> list:
    """Names of the label columns of a list: `labels.json`'s "columns" beside it, or a header comment
    `# path name1 name2 ...`, when either has one name per column; else `label` / `label0, label1, ...`."""
    cols = _labels_json(source).get("columns")
    if isinstance(cols, list) and len(cols) == num_labels:
        return [str(c) for c in cols]
    p = Path(source)
    if p.is_file():
        with open(p, errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("#"):
                    parts = line.lstrip("#").replace(",", " ").split()
                    if len(parts) == num_labels + 1:
                        return parts[1:]
                    continue
                break
    return ["label"] if num_labels == 1 else [f"label{i}" for i in range(num_labels)]


def class_names(source: str, column: str, num_classes: int) -> Optional[list]:
    """Class names of a label column from `labels.json` beside the list, if it has the right count."""
    names = _labels_json(source).get(column)
    return [str(n) for n in names] if isinstance(names, list) and len(names) == num_classes else None


def resolve_label_column(spec: str, names: Sequence[str], where: str = "finetune.label_column") -> int:
    """'' -> 0; an index ('2'); or a column name."""
    if spec == "" or spec is None:
        return 0
    if str(spec).lstrip("-").isdigit():
        i = int(spec)
        if not 0 <= i < len(names):
            raise UserError(f"{where}={spec}: the list has {len(names)} label column(s) ({', '.join(names)})")
        return i
    if spec not in names:
        raise UserError(f"{where}='{spec}' is not a label column; the list's columns are: {', '.join(names)}")
    return list(names).index(spec)
