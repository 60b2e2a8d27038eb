"""Which model the user means: a registered name, a checkpoint file, or neither.

The one place that turns what a user typed (``vimc predict``, ``vimc demo``, ``vimc info``,
``vimc export``/``parity`` and their Python counterparts) into a model in eval mode. It raises
model-layer errors, which each caller reports its own way (the CLI as exit 2):

- :class:`ModelNotFound` (a ``ValueError``): an unknown name, or a checkpoint whose model
  cannot be told from its shapes;
- ``FileNotFoundError``: a checkpoint path that does not exist;
- ``vimc.checkpoint.CheckpointError`` (a ``ValueError``): a checkpoint that does not fit;
- ``ValueError`` from ``create_model``: no built-in weights, sizes that do not fit.
"""

from __future__ import annotations

from pathlib import Path

from vimc.checkpoint import read_checkpoint
from vimc.hub import hub_download, is_hub_path, parse_hub_path
from vimc.model import VisionMamba, create_model, get_variant, list_models

DEFAULT_MODEL = "vim_digits"  # the model with built-in weights, used when nothing is named

# official checkpoints record no architecture: their width names the variant
_BY_WIDTH = {192: "vim_tiny", 384: "vim_small", 768: "vim_base"}
_STRIDE8_TOKENS = 27 * 27 + 1  # pos_embed length of a stride-8 model at 224 px


class ModelNotFound(ValueError):
    """No registered model answers to a name, or fits a checkpoint."""


def check_model_name(name: str) -> str:
    """``name`` if registered (short or official long name), else :class:`ModelNotFound`."""
    if name not in list_models(include_aliases=True):
        raise ModelNotFound(
            f"unknown model {name!r}; known models: {', '.join(list_models())} (see `vimc list`)"
        )
    return name


def guess_model(checkpoint) -> str:
    """The registered variant that fits a checkpoint's shapes: the architecture recorded in
    vimc's own files, else the width and stride of an official file."""
    if is_hub_path(checkpoint):
        checkpoint = hub_download(*parse_hub_path(checkpoint))
    sd, record = read_checkpoint(checkpoint)
    if record and record.get("architecture"):
        return record["architecture"]
    cls, pe = sd.get("cls_token"), sd.get("pos_embed")
    if cls is None or pe is None:
        raise ModelNotFound(
            f"{checkpoint}: not a Vim checkpoint (no cls_token/pos_embed); pass --model"
        )
    width = _BY_WIDTH.get(cls.shape[-1])
    if width is None:
        raise ModelNotFound(
            f"{checkpoint}: embedding width {cls.shape[-1]} matches no registered "
            f"model; pass --model"
        )
    # vim_base has no stride-8 variant
    return width + ("_s8" if pe.shape[1] == _STRIDE8_TOKENS and width != "vim_base" else "")


def load_model(
    name: str | None = None, checkpoint=None, *, pretrained: bool | str = True, **overrides
) -> VisionMamba:
    """A registered model in eval mode, with its weights.

    ``name``: a registered model; None means the one ``checkpoint`` fits (:func:`guess_model`),
    or :data:`DEFAULT_MODEL` without a checkpoint. ``checkpoint``: an official .pth file or
    vimc safetensors (file or ``save_pretrained`` folder); it wins over built-in weights.
    Without a checkpoint, ``pretrained`` picks the weights:

    - ``True``: the variant's weights, as ``create_model(name, pretrained=True)`` finds them;
      a ``ValueError`` if it has none;
    - ``False``: random initialization;
    - ``"auto"``: the built-in weights (shipped in ``vimc/weights/``) where the variant has
      them, else random initialization, never a download (what an export wants:
      ``vim_digits`` exports its trained weights, ``vim_tiny`` without a checkpoint a randomly
      initialized model of the right shape);
    - ``"ask"``: the built-in weights, else a ``ValueError`` that says how to get weights
      (``pretrained=True`` / ``--pretrained`` for the official ones, or a checkpoint): what a
      prediction wants, never random weights and never an unasked-for download.

    ``overrides``: ``create_model``'s keywords (``img_size``, ``device``, ``dtype``, ...).
    """
    if pretrained not in (True, False, "auto", "ask"):
        raise ValueError(f"pretrained must be True, False, 'auto' or 'ask', got {pretrained!r}")
    if checkpoint is not None and not is_hub_path(checkpoint) and not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if name is None:
        name = guess_model(checkpoint) if checkpoint is not None else DEFAULT_MODEL
    check_model_name(name)
    if checkpoint is not None:
        model = create_model(name, checkpoint_path=checkpoint, **overrides)
    else:
        builtin = get_variant(name).weights is not None
        if pretrained == "ask" and not builtin:
            raise ValueError(
                f"{name!r} has no built-in weights: pass --pretrained (pretrained=True) for its "
                f"official weights from the Hugging Face Hub, or --checkpoint (checkpoint=) "
                f"for a file"
            )
        if pretrained in ("auto", "ask"):
            pretrained = builtin
        model = create_model(name, pretrained=pretrained, **overrides)
    return model.eval()


__all__ = ["DEFAULT_MODEL", "ModelNotFound", "check_model_name", "guess_model", "load_model"]
