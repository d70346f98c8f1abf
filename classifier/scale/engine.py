"""The ``--engine`` option shared by large-log commands, and the Ray session they run in.

A command that can scale out calls :func:`add_engine_arguments` on its parser and, when
``args.engine == "ray"``, hands over to its Ray implementation, which opens :func:`ray_session`.
This is the hook ``tierwise route --input``, ``report``, ``drift``, ``feedback join`` and
``adapt`` (its feature extraction) use.

``--address`` names an existing cluster (``auto``, ``ray://head:10001``, or ``host:6379``);
without it a local cluster is started for the command with ``--ray-cpus`` CPUs and stopped at
the end. On a local cluster the workers import ``classifier`` from the same place as the driver.

What it leaves out: Ray itself (imported only inside :func:`ray_session`) and cluster
provisioning (docs/scale.md: ``ray start``, KubeRay).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# object store of a local cluster: bounded so that a laptop or a shared box is not swamped; Ray
# spills to disk past it
LOCAL_OBJECT_STORE_BYTES = 1_500_000_000
# idle workers a local cluster keeps beyond its CPUs: the read and write tasks (0 CPU, at most
# ``io.IO_CONCURRENCY`` of each at a time) and Ray Data's own helper tasks
IO_WORKERS = 4


def add_engine_arguments(parser: argparse.ArgumentParser, *, actors: bool = True) -> None:
    """``--engine``, ``--address``, ``--ray-cpus`` (and ``--actors``) on a command's parser."""
    group = parser.add_argument_group("scale-out (optional 'ray' extra)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process (default); ray: Ray Data on a local or existing cluster")
    group.add_argument("--address", default=None,
                       help="Ray cluster to join (auto, ray://HOST:10001, HOST:6379); default: start a local one")
    group.add_argument("--ray-cpus", type=int, default=None,
                       help="CPUs of the local Ray cluster started without --address (default: all)")
    if actors:
        group.add_argument("--actors", type=int, default=None,
                           help="routing actors, each holding one Router (default: cluster CPUs / --threads)")


def check_engine_args(args: argparse.Namespace) -> None:
    """Clear errors for engine options that do not go together."""
    engine = getattr(args, "engine", "local")
    if engine != "ray":
        for name in ("address", "ray_cpus", "actors"):
            if getattr(args, name, None) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} needs --engine ray")
        return
    for name in ("ray_cpus", "actors"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or a ConfigError saying how to install the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not just core
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs the optional 'ray' extra: pip install 'tierwise[ray]' ({exc})") from None
    return ray


def _package_root() -> str:
    import classifier

    return str(Path(classifier.__file__).resolve().parent.parent)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """A connected Ray (joined at ``address`` or started locally); shut down on exit if started here.

    An already initialised Ray (a test, a notebook) is used as it is and left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        if num_cpus is not None:
            raise ConfigError("--ray-cpus sizes a local cluster: drop it with --address")
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        kwargs["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        # the local workers import classifier from where this driver does (a checkout or a venv)
        path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    start_local(ray, **kwargs)
    logger.info("ray: %s, %s CPUs", address or "local cluster", ray.cluster_resources().get("CPU"))
    try:
        yield ray
    finally:
        ray.shutdown()


def start_local(ray: Any, attempts: int = 3, **kwargs: Any) -> None:
    """``ray.init(**kwargs)`` of a local cluster, tried again when the node does not come up in
    Ray's fixed 30 s (an overloaded machine: the GCS or the raylet starts too slowly); the last
    failure is raised. The workers run at this process's priority: Ray's default adds 15 to their
    niceness, which on a shared machine starves the routing actors (measured: ~6x slower than
    one process at the command's own priority). ``RAY_worker_niceness`` set by the caller wins.

    Idle workers are kept for a minute. Ray's default keeps at most ``num_cpus`` idle workers and
    kills the rest after 1 s idle. The routing actors hold their workers, so the 0-CPU read and
    write tasks then ran in fresh processes over and over. Measured on 2 cores: 155 worker
    processes started in 12 minutes of routing, and about a third of the machine spent importing
    Ray in them. ``RAY_num_workers_soft_limit`` / ``RAY_idle_worker_killing_time_threshold_ms``
    set by the caller win."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    cpus = int(kwargs.get("num_cpus") or os.cpu_count() or 1)
    os.environ.setdefault("RAY_num_workers_soft_limit", str(cpus + IO_WORKERS))
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "60000")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            logger.warning("ray: the local node timed out during startup (attempt %d of %d); retrying",
                           attempt, attempts)
            ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def actor_count(ray: Any, threads: int, requested: int | None) -> int:
    """Routing actors: as asked, else one per ``threads`` cluster CPUs (at least one)."""
    if requested is not None:
        return requested
    return max(1, cluster_cpus(ray) // max(1, threads))
