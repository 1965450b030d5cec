"""Loading a state dict into a model with every key accounted for (checkpoints, conversions, fine-tuning)."""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import torch

from motionmae.errors import UserError

_NO_TABLE = ("no stored sincos3d positional table: the weights were trained with model.pos_embed=sincos1d (never "
             "stored), or written before motionmae stored sincos3d tables; for the latter, `motionmae convert --from "
             "motionmae --to motionmae SRC DST` adds it from SRC's own config")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Unwrap {'model': ...} / {'module': ...} / {'state_dict': ...} and drop `module.` / `_orig_mod.` prefixes
    (DDP, torch.compile), as checkpoints of other code bases carry them."""
    for top in ("model", "module", "state_dict"):
        if top in state_dict and isinstance(state_dict[top], Mapping):
            state_dict = state_dict[top]
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("module.", "_orig_mod.")):  # either order: DDP(compile(m)) and compile(DDP(m))
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def load_matching(
    model: torch.nn.Module, sd: Dict[str, torch.Tensor], where: str, fresh: Sequence[str] = (), strict: bool = True, hint: str = ""
) -> Dict[str, List[str]]:
    """Load `sd` into `model` with every key accounted for; the one strict loader of the code base.

    A model key `sd` lacks ('missing'; keys starting with one of `fresh` are allowed to, and keep their
    initial values), a key the model lacks ('unexpected') or a shape mismatch is one UserError starting
    with `where` and naming the keys (`strict=False`: only shape mismatches; the rest is returned).
    Returns {'missing': [...], 'unexpected': [...], 'fresh': [...]}.
    """
    own = model.state_dict()
    fresh = tuple(fresh)  # str.startswith(()) is False: no prefix, nothing fresh
    absent = [k for k in own if k not in sd]
    out = {
        "missing": [k for k in absent if not k.startswith(fresh)],
        "unexpected": [k for k in sd if k not in own],
        "fresh": [k for k in absent if k.startswith(fresh)],
    }
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    problems = [f"shape mismatches {shapes[:8]}"] if shapes else []
    if strict:
        problems += [f"{name} keys {out[name][:8]}" for name in ("missing", "unexpected") if out[name]]
        buffers = dict(model.named_buffers())
        if any(k.endswith("pos_embed") and k in buffers for k in out["missing"]):  # a sincos3d table (models/vit.py)
            hint = "; ".join(filter(None, [hint, _NO_TABLE]))
        if any(k.endswith("pos_embed") for k in out["unexpected"]):
            hint = "; ".join(filter(None, [hint, "a stored positional table: the weights were trained with "
                                                 "model.pos_embed=sincos3d or learnable, not this model's sincos1d"]))
    if problems:
        raise UserError(f"{where}: does not match the model: " + "; ".join(problems) + (f" ({hint})" if hint else ""))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return out
