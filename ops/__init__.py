"""vimc.ops: the kernels and their torch.library registrations (installed from the ops/ folder)."""

from .selective_scan import *  # noqa: F403  (the public names, listed once in its __all__)
from .selective_scan import __all__  # noqa: F401
