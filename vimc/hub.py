"""Checkpoints from the Hugging Face Hub, through its own client (``hf_hub_download``).

The client keeps its cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), honours
``HF_HUB_OFFLINE=1`` (the cached copy or nothing) and verifies what it downloads; vimc only
names the file and turns the client's failures into one :class:`CheckpointError` that says
which repository and file it wanted and how to get them. The file is then read by the same
safe loader as a local checkpoint (vimc/checkpoint.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from vimc.checkpoint import CheckpointError

HUB_PREFIX = "hf-hub:"
_HUB_PATH = re.compile(r"hf-hub:(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>[^\s]+)")


def is_hub_path(path) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_path(path: str) -> tuple[str, str]:
    """``"hf-hub:OWNER/REPO/FILE"`` -> (``"OWNER/REPO"``, ``"FILE"``)."""
    m = _HUB_PATH.fullmatch(path)
    if m is None:
        raise CheckpointError(
            f"checkpoint_path {path!r}: expected {HUB_PREFIX}OWNER/REPO/FILE, for example "
            f"{HUB_PREFIX}hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth"
        )
    return m["repo"], m["file"]


def hub_download(repo_id: str, filename: str) -> Path:
    """The local path of ``filename`` from the Hub repository ``repo_id``: the cached copy, or
    a download when the Hub is reachable and ``HF_HUB_OFFLINE`` is not set."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # a core dependency, but an environment may lack it
        raise CheckpointError(
            f"{repo_id}/{filename} is on the Hugging Face Hub and huggingface_hub is not "
            f"installed: pip install huggingface_hub, or download the file and pass "
            f"checkpoint_path=..."
        ) from None
    how = (
        "Run once with network access (without HF_HUB_OFFLINE=1) to fill the Hub cache, or "
        f"download {filename} from https://huggingface.co/{repo_id} and pass "
        "checkpoint_path=<the file> (vimc predict/export: --checkpoint)"
    )
    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:
        reason = "it is not in the Hub cache and the Hub cannot be reached (or HF_HUB_OFFLINE=1)"
    except (RepositoryNotFoundError, EntryNotFoundError):
        reason = "the Hub has no such repository or file"
        how = "Check the name (vimc.list_models(), pretrained_cfg['hf_hub_id'])"
    except (HfHubHTTPError, HFValidationError, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise CheckpointError(
        f"cannot get {filename} from the Hugging Face Hub repository {repo_id}: {reason}. {how}."
    )
