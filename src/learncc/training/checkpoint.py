"""Training checkpoints without pickle: tensors in safetensors, the rest JSON.

``torch.save`` would pickle the optimizer state; we flatten it into named
tensors instead so that resuming never unpickles a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from learncc.errors import BundleError


def save_checkpoint(
    path: Path,
    *,
    states: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    """Write ``path/tensors.safetensors`` and ``path/meta.json`` atomically enough
    for a resume: the JSON is written last, so a half-written checkpoint is
    recognised by its missing or stale JSON."""
    path.mkdir(parents=True, exist_ok=True)
    flat: dict[str, torch.Tensor] = {}
    for prefix, state in states.items():
        for name, tensor in state.items():
            flat[f"{prefix}/{name}"] = tensor.detach().contiguous().clone()
    opt_state = optimizer.state_dict()
    for pid, pstate in opt_state["state"].items():
        for name, value in pstate.items():
            flat[f"optim/{pid}/{name}"] = torch.as_tensor(value).clone()
    save_file(flat, str(path / "tensors.safetensors"))
    groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
    tmp = path / "meta.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "param_groups": groups}, default=float))
    os.replace(tmp, path / "meta.json")


def load_checkpoint(
    path: Path, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Restore the optimizer in place; return the named states and the metadata."""
    try:
        flat = load_file(str(path / "tensors.safetensors"))
        saved = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"checkpoint at {path} is unreadable: {e}") from None
    states: dict[str, dict[str, torch.Tensor]] = {}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        prefix, _, rest = key.partition("/")
        if prefix == "optim":
            pid, _, name = rest.partition("/")
            optim_state.setdefault(int(pid), {})[name] = tensor
        else:
            states.setdefault(prefix, {})[rest] = tensor
    optimizer.load_state_dict(
        {"state": optim_state, "param_groups": saved["param_groups"]}
    )
    return states, saved["meta"]
