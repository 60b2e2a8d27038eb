"""The selective scan (Mamba's S6 recurrence) as a torch.library op: ``vimc::selective_scan_fwd``
and ``vimc::selective_scan_bwd``, with a float64-capable reference beside it."""

from ._alloc import poison_outputs
from .bidirectional import selective_scan_bidirectional, selective_scan_bidirectional_token_major
from .conv import anticausal_conv1d, causal_conv1d, conv1d_channel_major, conv1d_silu_pair
from .mixer import mixer_core, mixer_core_available
from .op import MAX_D_STATE, selective_scan
from .reference import selective_scan_reference

__all__ = [
    "MAX_D_STATE",
    "anticausal_conv1d",
    "causal_conv1d",
    "conv1d_channel_major",
    "conv1d_silu_pair",
    "mixer_core",
    "mixer_core_available",
    "poison_outputs",
    "selective_scan",
    "selective_scan_bidirectional",
    "selective_scan_bidirectional_token_major",
    "selective_scan_reference",
]
