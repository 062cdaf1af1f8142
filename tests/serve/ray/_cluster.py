"""A real Ray cluster on this machine for the tests: a head and worker nodes, each a separate `ray start --block`
process in its own process group, with its own temp folder, ports and resources.

A node is stopped the way a machine dies: SIGKILL to every process of its group and their descendants (the
raylet, its Ray workers and the job processes they started). Nothing is left behind: :meth:`Cluster.stop` kills
every node's processes and removes the temp folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
#: GCS health checks every second, a node dead after 8 misses: a killed node is noticed in about 10 s, not 30 s,
#: and a node starved of CPU on a busy machine is not taken for dead
SYSTEM_CONFIG = '{"health_check_period_ms": 1000, "health_check_failure_threshold": 8}'
OBJECT_STORE = str(80 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(entry))
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def tree(root: int) -> set[int]:
    """``root``, its process group and every descendant of them (a snapshot)."""
    kids = _children()
    group = {p for ps in kids.values() for p in ps if _pgid(p) == root}
    out: set[int] = set()
    stack = [root, *group]
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.add(pid)
            stack.extend(kids.get(pid, []))
    return out


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    pids: set[int] = field(default_factory=set)

    def kill(self) -> None:
        """SIGKILL the node: every process it started (twice: a dying raylet may spawn nothing new, but look)."""
        for _ in range(2):
            for pid in tree(self.proc.pid) - {os.getpid()}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def owns(self, pid: int) -> bool:
        return pid in tree(self.proc.pid)


class Cluster:
    """``start()`` a head (no CPUs: it runs no job) and ``workers`` nodes of 1 CPU and 1 GPU each (Ray takes
    ``--num-gpus`` at its word, so a CPU machine can fake GPUs: placement is what is tested)."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hdpo-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
        # no idle Ray workers started ahead of use (each is a Python process of ~100 MB)
        self.env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_worker_prestart": "0",
                    "RAY_prestart_worker_first_driver": "0"}
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.nodes: dict[str, Node] = {}

    def _start(self, name: str, args: list[str]) -> Node:
        ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
        base = _free_port()
        worker_ports = ["--min-worker-port", str(base), "--max-worker-port", str(min(base + 40, 65535))]
        argv = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.tmp / name),
                "--object-store-memory", OBJECT_STORE, "--disable-usage-stats", "--include-log-monitor", "false",
                *[x for p in ports for x in (p, str(_free_port()))], *worker_ports, *args]
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return Node(name, proc, log)

    def _started(self, name: str, args: list[str], tries: int = 2, timeout: float = 180) -> Node:
        """Start a node and wait for it; once more if it fails (`ray start` gives a raylet 30 s to register,
        which a machine under heavy load can miss)."""
        for attempt in range(tries):
            node = self._start(f"{name}-{attempt}" if attempt else name, args)
            self.nodes[name] = node
            deadline = time.monotonic() + timeout
            while b"Ray runtime started" not in node.log.read_bytes():
                if node.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            else:
                return node
            node.kill()
        raise RuntimeError(f"ray node {name} did not start: {node.log.read_text()[-3000:]}")

    def start(self) -> Cluster:
        """The head, then the workers one after the other (starting them together only adds load)."""
        self._started("head", ["--head", "--port", str(self.port), "--num-cpus", "0", "--num-gpus", "0",
                               "--include-dashboard", "false", "--dashboard-port", str(_free_port()),
                               "--ray-client-server-port", str(_free_port()), "--system-config", SYSTEM_CONFIG])
        for i in range(self.workers):
            self._started(f"w{i}", ["--address", self.address, "--num-cpus", "1", "--num-gpus", "1",
                                    "--resources", f'{{"w{i}": 1}}'])
        return self

    def node_of(self, pid: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.name != "head" and n.owns(pid)), None)

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)
