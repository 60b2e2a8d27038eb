"""vimc: Vision Mamba (Vim), compiler-first."""

from vimc.ops import selective_scan, selective_scan_reference

__version__ = "0.1.0"

__all__ = ["__version__", "selective_scan", "selective_scan_reference"]
