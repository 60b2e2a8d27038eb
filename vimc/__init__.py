"""vimc: Vision Mamba (Vim), compiler-first."""

__version__ = "0.1.0"

from vimc.model import VimConfig, VisionMamba, create_model, list_models, register_variant  # noqa: E402
from vimc.ops import selective_scan, selective_scan_reference  # noqa: E402

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
