"""vimc.ops: the kernels and their torch.library registrations (installed from the ops/ folder)."""

from .selective_scan import (
    MAX_D_STATE,
    poison_outputs,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_reference,
)

__all__ = [
    "MAX_D_STATE",
    "poison_outputs",
    "selective_scan",
    "selective_scan_bidirectional",
    "selective_scan_reference",
]
