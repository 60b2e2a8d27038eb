"""vimc: Vision Mamba (Vim), compiler-first."""

from vimc.model import VimConfig, VisionMamba, create_model, list_models, register_variant
from vimc.ops import selective_scan, selective_scan_reference
from vimc.version import __version__

__all__ = [
    "VimConfig",
    "VisionMamba",
    "__version__",
    "create_model",
    "list_models",
    "register_variant",
    "selective_scan",
    "selective_scan_reference",
]
