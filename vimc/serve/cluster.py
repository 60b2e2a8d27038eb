"""Connecting to Ray: a local instance of our own, or an existing cluster (``--address``).

Either way a command leaves Ray as it found it: it shuts down only the instance it started,
so a Python session or a test that had already called ``ray.init`` keeps its own.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from vimc.data import MissingDependencyError


def import_ray():
    """``ray``, or a :class:`MissingDependencyError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "this command runs on Ray, which is not installed: pip install 'vimc[serve]' "
            "(or pip install 'ray[serve,data]')"
        ) from None
    return ray


@contextmanager
def ray_connection(address: str | None = None, *, num_cpus: float | None = None):
    """Inside: a connected Ray. ``address``: join that cluster (``"auto"``: the one
    ``ray start`` runs on this machine; ``"ray://host:10001"``: Ray Client); ``None``: start a
    local instance bound to 127.0.0.1 with ``num_cpus`` CPUs (default: all), shut down on
    exit. Yields whether this call started Ray."""
    ray = import_ray()
    if ray.is_initialized():
        yield False
        return
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # loopback only: a local instance is for this machine; other machines join a cluster
        # started with `ray start --head`, not this one
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
    try:
        yield True
    finally:
        ray.shutdown()


def check_cpus(needed: float, what: str, *, strict: bool) -> None:
    """Whether the cluster has ``needed`` CPUs for ``what``: a ``ValueError`` if not and
    ``strict`` (a local instance cannot grow), else a warning (an autoscaling cluster may add
    nodes; Ray then waits for them)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    if needed <= total:
        return
    message = f"{what} needs {needed:g} CPUs and the Ray cluster has {total:g}"
    if strict:
        raise ValueError(message)
    logging.getLogger("vimc").warning("%s; Ray waits until they are available", message)


__all__ = ["check_cpus", "import_ray", "ray_connection"]
