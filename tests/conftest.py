"""Shared test set-up: Triton interpreter on GPU-less machines, NaN-poisoned outputs, bounded
hypothesis runs, deterministic seeds."""

import os

# Triton kernels run on CPU tensors through its interpreter when the machine has no NVIDIA GPU.
# The variable is read when triton is first imported, so it is set before anything imports it.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never use the network: the Hub client (read at its import) serves cached files only.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("VIMC_HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every kernel output starts as NaN, so an element a kernel forgets to write fails tests."""
    from vimc.ops import poison_outputs

    with poison_outputs(True):
        yield


@pytest.fixture(scope="session")
def ort_plugin():
    """The path of vimc's ONNX Runtime plugin (built once); skips where it cannot be built."""
    from vimc.ops.selective_scan.ort_plugin import library_path

    try:
        return library_path()
    except RuntimeError as exc:  # no C compiler: the plugin cannot exist on this machine
        pytest.skip(f"vimc's ONNX Runtime plugin cannot be built here: {exc}")
