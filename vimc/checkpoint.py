"""Checkpoint I/O: official hustvl/Vim files, bare state_dicts, vimc's safetensors.

- Official training checkpoints are dicts (model, optimizer, lr_scheduler, epoch, model_ema,
  scaler, args) whose "args" is a pickled ``argparse.Namespace``. They are read with
  ``torch.load(weights_only=True)`` allowing exactly that one class; anything else in the
  pickle is refused, never executed.
- vimc's key names are the official names, so no renaming happens; only wrappers ("model",
  "state_dict") and prefixes ("module.", "_orig_mod.") are taken off.
- pos_embed learned on another grid is resized for the middle class token (vim.md
  "Resolution changes"): class entry out of index M // 2, grid resized bicubically, class entry
  back at M' // 2.
- ``save_pretrained`` writes ``model.safetensors`` (config in its metadata too) + ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from vimc.version import __version__

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
# Larger than any Vim training checkpoint with optimizer state (Vim-B's is about 1.2 GB): a
# bigger file is refused before anything is read, not parsed into memory.
MAX_CHECKPOINT_BYTES = 16 * 2**30
# More patch entries than a 256 x 256 grid (4096 px at stride 16) is no Vim's pos_embed:
# resizing one would allocate without bound.
MAX_POS_EMBED_TOKENS = 256 * 256 + 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# pos_embed resizing
# ---------------------------------------------------------------------------------------------


def resize_pos_embed(pos_embed: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """(1, Mo + 1, D) with the class entry at Mo // 2 -> (1, Mn + 1, D) with it at Mn // 2;
    the (gh, gw) grid is resized bicubically (align_corners=False, as the official helper)."""
    gh, gw = old_grid
    nh, nw = new_grid
    if (gh, gw) == (nh, nw):
        return pos_embed
    Mo, Mn = gh * gw, nh * nw
    if pos_embed.shape[1] != Mo + 1:
        raise CheckpointError(
            f"pos_embed has {pos_embed.shape[1]} entries, expected {gh}x{gw} + 1 = {Mo + 1}"
        )
    po, pn = Mo // 2, Mn // 2
    cls = pos_embed[:, po : po + 1]
    grid = torch.cat((pos_embed[:, :po], pos_embed[:, po + 1 :]), dim=1)
    D = grid.shape[-1]
    grid = grid.reshape(1, gh, gw, D).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, Mn, D).to(pos_embed.dtype)
    return torch.cat((grid[:, :pn], cls, grid[:, pn:]), dim=1)


def _square_grid(M: int) -> tuple[int, int]:
    g = math.isqrt(M)
    if g * g != M:
        raise CheckpointError(
            f"cannot infer the patch grid of a pos_embed with {M} patch "
            f"entries (not a square); load it at its own img_size/stride"
        )
    return g, g


# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------


def _torch_load_safe(path: Path):
    """torch.load with weights_only=True and exactly argparse.Namespace allowed."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"\x80\x02" and not zipfile.is_zipfile(path):  # legacy pickle or zip
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither the zip format of "
            f"torch.save nor a legacy pickle) and not .safetensors"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()
        why = next(
            (ln.strip() for ln in detail if "GLOBAL" in ln or "Unsupported" in ln),
            detail[0] if detail else "",
        )
        raise CheckpointError(
            f"refusing to load {path}: it holds a pickled object that is not a tensor, a plain "
            f"container or argparse.Namespace (vimc never unpickles arbitrary objects). "
            f"torch.load said: {why}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {exc}") from None


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    """An official training checkpoint or a bare state_dict -> a flat state_dict."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path}: expected a state_dict or a training checkpoint with a "
            f"'model' entry, got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _check_file(path: Path) -> None:
    """A regular, non-empty file of plausible size, before a byte of it is parsed (a device
    such as /dev/zero would otherwise be read until memory runs out)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path} is {size / 2**30:.1f} GiB, more than any Vim checkpoint "
            f"({MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB at most)"
        )


def _check_tensors(sd: dict[str, torch.Tensor], path) -> None:
    """Real floating-point tensors with finite values: a complex tensor would lose its
    imaginary part on load, an integer one be cast silently, and NaN weights give NaN
    predictions that look like answers."""
    bad_dtype = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in sd.items()
        if not v.is_floating_point()
    ]
    if bad_dtype:
        raise CheckpointError(
            f"{path}: tensors that are not real floating point: {', '.join(bad_dtype[:10])}"
            + (f" and {len(bad_dtype) - 10} more" if len(bad_dtype) > 10 else "")
        )
    nonfinite = [k for k, v in sd.items() if not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(
            f"{path}: tensors with NaN or infinite values: {', '.join(nonfinite[:10])}"
            + (f" and {len(nonfinite) - 10} more" if len(nonfinite) > 10 else "")
        )
    pe = sd.get("pos_embed")
    if pe is not None and (pe.dim() != 3 or pe.shape[1] > MAX_POS_EMBED_TOKENS):
        raise CheckpointError(
            f"{path}: pos_embed must be (1, tokens, dim) with at most {MAX_POS_EMBED_TOKENS} "
            f"tokens, got {list(pe.shape)}"
        )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        if "vimc" in meta:
            record = json.loads(meta["vimc"])
        elif (path.parent / CONFIG_FILE).exists():
            record = json.loads((path.parent / CONFIG_FILE).read_text())
        else:
            return sd, None
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: its vimc config is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CheckpointError(
            f"{path}: its vimc record has no 'config' object (not written by save_pretrained?)"
        )
    return sd, record


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """-> (state_dict, vimc config record or None). Accepts a save_pretrained directory, a
    .safetensors file, an official training checkpoint or a bare state_dict. Every tensor is
    real floating point and finite; anything else is a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not (path / WEIGHTS_FILE).exists():
            raise CheckpointError(f"{path} is a directory without {WEIGHTS_FILE}")
        path = path / WEIGHTS_FILE
    _check_file(path)
    if path.suffix == ".safetensors":
        sd, record = _read_safetensors(path)
    else:
        sd, record = _unwrap(_torch_load_safe(path), path), None
    _check_tensors(sd, path)
    return sd, record


def check_config_fits(config, sd: dict[str, torch.Tensor], source) -> None:
    """The widths, depth and sizes a config asks for against the tensors ``sd`` holds, before
    a model is built from it: a file's recorded config is never trusted on its own (a few
    bytes of metadata could otherwise ask for a model of any size). Official key names."""
    got = {}
    if "cls_token" in sd:
        got["embed_dim"] = sd["cls_token"].shape[-1]
    layers = {
        int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()
    }
    got["depth"] = max(layers) + 1 if layers else 0
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.dim() == 4:
        got["in_chans"], got["patch_size"] = w.shape[1], w.shape[-1]
    a = sd.get("layers.0.mixer.A_log")
    if a is not None and a.dim() == 2:
        got["d_state"] = a.shape[-1]
    c = sd.get("layers.0.mixer.conv1d.weight")
    if c is not None and c.dim() == 3:
        got["d_conv"] = c.shape[-1]
    bad = [
        f"{name}: config {getattr(config, name)} vs tensors {value}"
        for name, value in got.items()
        if getattr(config, name) != value
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {source}: its config does not match its tensors ({'; '.join(bad)})"
        )


# ---------------------------------------------------------------------------------------------
# matching a state_dict to a model
# ---------------------------------------------------------------------------------------------


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, list]:
    """Missing keys, unexpected keys, and shape mismatches (key, checkpoint, model)."""
    own = model.state_dict()
    return {
        "missing": [k for k in own if k not in sd],
        "unexpected": [k for k in sd if k not in own],
        "shape": [
            (k, tuple(sd[k].shape), tuple(v.shape))
            for k, v in own.items()
            if k in sd and tuple(sd[k].shape) != tuple(v.shape)
        ],
    }


def _listed(items: list[str], most: int = 30) -> str:
    """The first ``most`` of ``items``, then how many more (a message stays readable when a
    file matches nothing)."""
    more = f", ... and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _format_problems(problems: dict[str, list], source, target: str) -> str:
    lines = [f"checkpoint {source} does not fit {target}:"]
    if problems["missing"]:
        lines.append(f"  missing keys ({len(problems['missing'])}): {_listed(problems['missing'])}")
    if problems["unexpected"]:
        lines.append(
            f"  unexpected keys ({len(problems['unexpected'])}): {_listed(problems['unexpected'])}"
        )
    if problems["shape"]:
        shapes = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in problems["shape"]]
        lines.append(f"  shape mismatches ({len(shapes)}): {_listed(shapes)}")
    return "\n".join(lines)


def fit_state_dict(
    model, sd: dict[str, torch.Tensor], *, source="state_dict", keep: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, list], str]:
    """``sd`` with pos_embed resized to ``model``'s grid, the problems left (missing,
    unexpected, shape: see check_state_dict; ``keep``: prefixes of the model's own entries the
    checkpoint need not provide) and their message. Reads only shapes of ``model``, so a model
    on the meta device checks a file before any memory is allocated for it."""
    sd = dict(sd)
    pe = sd.get("pos_embed")
    if pe is not None and pe.dim() == 3 and pe.shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = resize_pos_embed(
            pe, _square_grid(pe.shape[1] - 1), model.patch_embed.grid_size
        )
    problems = check_state_dict(model, sd)
    problems["missing"] = [k for k in problems["missing"] if not k.startswith(keep)]
    msg = _format_problems(problems, source, model.name or type(model).__name__)
    return sd, problems, msg


def load_state_dict(
    model,
    sd: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    source="state_dict",
    keep: tuple[str, ...] = (),
) -> dict[str, list]:
    """Load ``sd`` into ``model`` (pos_embed resized to the model's grid when needed). Strict:
    one CheckpointError listing every missing/unexpected key and shape mismatch. Not strict:
    loads what fits and returns the problems. ``keep``: prefixes of the model's own entries
    that the checkpoint is not expected to provide (a fresh head)."""
    sd, problems, msg = fit_state_dict(model, sd, source=source, keep=keep)
    if any(problems.values()):
        if strict:
            raise CheckpointError(msg)
        bad = {k for k, _, _ in problems["shape"]} | set(problems["unexpected"])
        sd = {k: v for k, v in sd.items() if k not in bad}
    model.load_state_dict(sd, strict=False)
    return problems


# ---------------------------------------------------------------------------------------------
# vimc's own format
# ---------------------------------------------------------------------------------------------


def save_pretrained(model, directory) -> Path:
    """``directory/model.safetensors`` (+ the config in its metadata) and ``config.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "architecture": model.name,
        "config": model.config.to_dict(),
        "format_version": FORMAT_VERSION,
        "vimc_version": __version__,
    }
    text = json.dumps(record, indent=2)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "vimc": text})
    (directory / CONFIG_FILE).write_text(text + "\n")
    return directory
