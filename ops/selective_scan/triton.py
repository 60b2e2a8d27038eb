"""Triton kernels for the selective scan (CUDA): placeholder until the kernels land."""


def triton_op_available() -> bool:
    return False


def selective_scan_fwd_triton(*args):
    raise NotImplementedError("the Triton selective-scan kernels are not written yet")


def selective_scan_bwd_triton(*args):
    raise NotImplementedError("the Triton selective-scan kernels are not written yet")
