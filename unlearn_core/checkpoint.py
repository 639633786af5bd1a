"""Checkpoints as safetensors (never pickle): weights, buffers and string metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from safetensors.torch import save_file

from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_path


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the model's state dict; ``metadata`` (JSON-able) is stored in the header."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"unlearn": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    return json.loads(header.get("unlearn", "{}"))


def load_checkpoint(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Load weights into ``model`` (strict); return the stored metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist")
    state = {}
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        for key in handle.keys():
            state[key] = handle.get_tensor(key)
        header = handle.metadata() or {}
    model.load_state_dict(state, strict=True)
    return json.loads(header.get("unlearn", "{}"))


def checkpoint_bytes(model: nn.Module, metadata: dict | None = None) -> bytes:
    """The checkpoint ``save_checkpoint`` writes, as bytes (for an object store)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_bytes(state, metadata={"unlearn": json.dumps(metadata or {}, sort_keys=True)})


def load_checkpoint_bytes(model: nn.Module, data: bytes, device: str | torch.device = "cpu",
                          source: str = "checkpoint") -> dict:
    """Load weights from checkpoint bytes into ``model`` (strict); return the metadata."""
    try:
        # safetensors layout: 8-byte little-endian header length, then the JSON header
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        state = load_bytes(data)
    except Exception as err:
        raise UserInputError(f"{source} is not a readable checkpoint: {err}") from err
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return json.loads(header.get("unlearn", "{}"))
