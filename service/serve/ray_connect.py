"""Connecting ``hdpo-tune serve --executor ray`` to its cluster, and the checks that make a bad set-up one line.

At start, before the server listens: the address answers (a TCP connection first, so a wrong address is one
line in seconds instead of Ray's minute of retries), the cluster runs the server's Ray and Python (Ray's own
check, its message shortened), and every node that could run a job process sees the data folder at the same
path, can write it, and has the server's hdpo-tune (a task pinned to each node reads a file the server just
wrote there). Each failure is an :class:`InputError`: one line, exit 2.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

from hdpo_core.errors import InputError

from .ray_executor import NAMESPACE, RayExecutor, describe, live_nodes
from .ray_runner import Probe

#: seconds for ray.init (after the address answered TCP; Ray's own wait for a local node is 60 s, so its message
#: comes first) and for the per-node probes
CONNECT_TIMEOUT_S = 90.0
PROBE_FILE = ".ray-probe"
_VERSIONS = re.compile(r"Ray: (\S+)\s+Python: (\S+)")


def parse_resources(items: list[str]) -> tuple[tuple[str, float], ...]:
    """``["CPU=2", "GPU=1", "memory=8e9"]`` -> pairs (one line naming the item for a bad one)."""
    out: dict[str, float] = {}
    for item in items:
        name, _, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not name or value < 0 or value != value or value == float("inf"):
            raise InputError(f"--ray-resources {item}: expected NAME=AMOUNT with a non-negative number, e.g. "
                             "CPU=4, GPU=1, memory=16e9 (bytes) or a custom resource")
        out[name] = value
    return tuple(out.items())


def job_bundle(configured: Mapping[str, float], cluster: Mapping[str, float]) -> dict[str, float]:
    """What each job process asks Ray for: ``--ray-resources``, else one CPU, plus one GPU when the cluster
    has any (one process per GPU, as `hdpo-tune launch` runs them)."""
    if configured:
        return {k: v for k, v in configured.items() if v > 0}
    return {"CPU": 1.0, **({"GPU": 1.0} if cluster.get("GPU", 0.0) > 0 else {})}


def _check_answers(address: str) -> None:
    """A host:port address that refuses TCP is one line now (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); start "
                         "its head (`ray start --head`) or fix the address") from None


def connection_error(address: str | None, exc: BaseException) -> InputError:
    """One line for what ``ray.init`` raised."""
    where = f"--ray-address {address}" if address else "--executor ray"
    text = str(exc)
    if "Version mismatch" in text:
        found = _VERSIONS.findall(text)
        if len(found) == 2:
            (ray_c, py_c), (ray_s, py_s) = found
            return InputError(f"{where}: the cluster runs Ray {ray_c} (Python {py_c}) but this server has Ray "
                              f"{ray_s} (Python {py_s}); install the same Ray and Python on the server and every node")
        return InputError(f"{where}: Ray version mismatch between the cluster and this server; install the same "
                          "Ray and Python everywhere")
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    if "No node info found" in text or "Could not find any running Ray instance" in text:
        return InputError(f"{where}: this machine runs no Ray node ({first}); a Ray driver needs one: run `ray start "
                          "--address HEAD:6379 --num-cpus 0` here first, or use --ray-address ray://HEAD:10001")
    return InputError(f"{where}: cannot connect to the Ray cluster ({first}); start it (`ray start --head`) or fix "
                      "the address")


def connect(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """``ray.init`` as a driver in :data:`NAMESPACE` (``address`` None: Ray's usual lookup, ``RAY_ADDRESS`` or
    a cluster started on this machine), within ``timeout_s``."""
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray: Ray is not installed here; pip install 'hdpo-tune[ray]' (the same Ray "
                         "version as the cluster's)") from None

    if address:
        _check_answers(address)
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise InputError(f"--ray-address {address}: no answer as a Ray cluster within {timeout_s:.0f} s; check that "
                         "the address is the head's GCS port (6379 by default)")
    if failure:
        raise connection_error(address, failure[0]) from None


def check_nodes(data_dir: Path, bundle: Mapping[str, float], timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Every live node that could run a job process sees ``data_dir`` at the same path, can write it, and has
    this hdpo-tune; returns how many such nodes there are. Raises :class:`InputError` naming the first node that
    does not."""
    from importlib.metadata import version

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .ray_runner import probe

    token = secrets.token_hex(16)
    path = data_dir / PROBE_FILE
    path.write_text(token, encoding="utf-8")
    ours = version("hdpo-tune")
    task = ray.remote(probe)
    nodes = [n for n in live_nodes() if all(n["Resources"].get(k, 0.0) >= v for k, v in bundle.items())]
    refs = [task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(path), token) for n in nodes]
    try:
        answers = ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise InputError(f"--executor ray: a node did not answer the data folder check within {timeout_s:.0f} s "
                         "(is it overloaded, or unable to start a Ray worker?)") from None
    finally:
        path.unlink(missing_ok=True)
    for node, answer in zip(nodes, answers, strict=True):
        problem = node_problem(node["NodeID"], answer, data_dir, ours)
        if problem is not None:
            raise InputError(problem)
    return len(nodes)


def node_problem(node_id: str, answer: Probe, data_dir: Path, version: str) -> str | None:
    """The one line refusing a node whose probe says it cannot serve jobs, or None."""
    where = f"Ray node {answer.address} ({node_id[:8]})"
    if not answer.sees:
        return (f"--data: {where} cannot see the data folder {data_dir}; mount the shared folder (NFS, a "
                "ReadWriteMany volume) at the same path on every node")
    if not answer.writable:
        return f"--data: {where} cannot write the data folder {data_dir}; let the job processes' user write it there"
    if answer.version != version:
        return (f"--executor ray: {where} has hdpo-tune {answer.version}, this server {version}; run the same "
                "hdpo-tune on the server and every node")
    return None


def ray_executor(address: str | None, data_dir: Path, configured: Mapping[str, float]) -> tuple[RayExecutor, str]:
    """Connect, check, and build the executor; returns it with one line describing the cluster for the log."""
    import ray

    connect(address)
    cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    bundle = job_bundle(configured, cluster)
    usable = check_nodes(data_dir, bundle)
    summary = (f"Ray {ray.__version__} at {address or 'the local cluster'}: {len(live_nodes())} node(s), "
               f"{usable} can run a job process of {describe(bundle)}")
    return RayExecutor(bundle), summary
