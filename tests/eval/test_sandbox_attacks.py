"""The code verifier's sandbox against real attacks (trust issue, point 6), under real bubblewrap.

Every attack first defeats the in-process audit hook the way the issue found possible (its settings are ordinary
objects: the sets of refused events are emptied and the root path blanked), so what is tested is the OS layer.
Each test checks effects on the host from outside: files, processes, the listener, the victim process.
Timing enters only as generous upper bounds that catch a hang (never as equalities).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hdpo_core.eval import bwrap
from hdpo_core.eval.sandbox import SandboxResult, SandboxUnavailable, require_sandbox, run_python
from hdpo_core.eval.verifiers import get_verifier, verify_many

# the audit hook, gone: no event refused, every path "inside"
DEFEAT_HOOK = "_PROC_EVENTS.clear(); _WRITE_EVENTS.clear(); _root = ''\n"


@pytest.fixture(autouse=True)
def sandbox() -> bwrap.Isolation:
    """The attacks need the real sandbox: fail (not skip) when bubblewrap cannot run, with the fix."""
    iso, why = bwrap.isolation()
    if iso is None:
        pytest.fail(f"bubblewrap sandbox unavailable ({why}); apt-get install -y bubblewrap (as .ci/run does)")
    return iso


def token() -> str:
    """A unique ``sleep`` argument, so the host can find (by command line) any process an attack leaves."""
    return f"{9000 + random.randrange(999)}.{random.randrange(10**6):06d}"


def survivors(mark: str, wait_s: float = 15.0) -> list[int]:
    """Host pids whose command line holds ``mark``, after giving the kernel up to ``wait_s`` to reap them."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if mark.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def run(program: str, timeout_s: float = 5.0, memory_mb: int = 256) -> SandboxResult:
    return run_python(DEFEAT_HOOK + program, timeout_s=timeout_s, memory_mb=memory_mb)


def test_the_hook_is_really_defeated_yet_the_program_is_nobody_alone_and_clean() -> None:
    r = run("import os, sys\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
            "print('forked', os.getuid(), os.getgid(), sorted(os.environ))\n"
            "print('procs', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    assert r.passed, r
    assert "forked 65534 65534 ['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONHASHSEED', 'TMPDIR']" in r.output
    assert "procs [1, 2]" in r.output  # bwrap's reaper and the program: no host process is visible


def test_bounded_fork_bomb_stops_at_the_process_limit_and_leaves_nothing() -> None:
    mark = token()
    r = run("import os\nn = 0\nfor i in range(300):\n    try:\n        pid = os.fork()\n"
            "    except OSError as e:\n        print('refused after', n, e.errno); break\n"
            f"    if pid == 0:\n        os.execv('/bin/sleep', ['sleep', '{mark}'])\n    n += 1\n"
            "print('forked', n)\n", timeout_s=5.0)
    assert "refused after" in r.output, r
    forked = int(r.output.split("refused after")[1].split()[0])
    assert 0 < forked < 16, r.output
    assert survivors(mark) == []


def test_memory_bomb_hits_the_address_space_limit() -> None:
    r = run("xs = []\nfor i in range(64):\n    xs.append(bytearray(64 << 20))\nprint('allocated', len(xs))\n",
            memory_mb=256)
    assert not r.passed and "MemoryError" in r.output, r


def test_setsid_escape_dies_with_the_namespace_at_the_timeout() -> None:
    mark = token()
    start = time.monotonic()
    r = run(f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{mark}'])\n"
            "time.sleep(120)\n", timeout_s=2.0)
    assert r.status == "timeout", r
    assert time.monotonic() - start < 30  # before the fix: it waited for the escaped child
    assert survivors(mark) == []


def test_setsid_escape_dies_when_the_program_exits_early() -> None:
    mark = token()
    r = run(f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{mark}'])\n"
            "print('parent done')\n", timeout_s=5.0)
    assert r.passed and "parent done" in r.output, r
    assert survivors(mark) == []


def test_kill_and_pidfd_send_signal_cannot_reach_the_evaluator_or_its_processes() -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        targets = [os.getpid(), victim.pid, os.getppid()]
        r = run("import os, signal\n"
                f"for pid in {targets}:\n"
                "    try:\n        signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL); print('pidfd hit', pid)\n"
                "    except OSError as e:\n        print('pidfd', pid, e.errno)\n"
                "    try:\n        os.kill(pid, signal.SIGKILL); print('kill hit', pid)\n"
                "    except OSError as e:\n        print('kill', pid, e.errno)\n"
                "os.kill(-1, signal.SIGKILL)\n")
        time.sleep(0.5)
        assert victim.poll() is None, r  # still running
        for pid in targets:
            assert f"hit {pid}" not in r.output, r.output
    finally:
        victim.kill()
        victim.wait()


def test_blanked_root_path_still_cannot_write_outside(tmp_path: Path) -> None:
    outside = [tmp_path / "pwned", Path("/etc/hdpo-pwned"), Path("/usr/hdpo-pwned"), Path.home() / "hdpo-pwned"]
    r = run("import os\n"
            f"for p in {[str(p) for p in outside]!r}:\n"
            "    try:\n        open(p, 'w').write('x'); print('wrote', p)\n"
            "    except OSError as e:\n        print('blocked', p, e.errno)\n"
            "open('/tmp/inside.txt', 'w').write('fine'); print('inside ok')\n")
    assert "inside ok" in r.output, r
    for p in outside:
        assert not p.exists(), (p, r.output)


def test_parent_environment_and_files_are_invisible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"hdpo-fake-secret-{random.randrange(10**9)}"
    monkeypatch.setenv("HDPO_FAKE_SECRET", secret)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o644)  # world-readable: only the sandbox's view of the file system keeps it out
    tmp_path.chmod(0o755)
    here = Path(__file__).resolve()
    r = run("import os, glob\nprint(dict(os.environ))\n"
            f"for p in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/2/environ',"
            f" {str(secret_file)!r}, {str(here)!r}]:\n"
            "    try:\n        print(p, open(p, 'rb').read()[:200])\n"
            "    except OSError as e:\n        print('unreadable', p, e.errno)\n"
            "print(sorted(os.listdir('/')), glob.glob('/tmp/*'))\n")
    assert r.passed, r
    assert secret not in r.output and "HDPO_FAKE_SECRET" not in r.output
    assert f"unreadable {secret_file}" in r.output and f"unreadable {here}" in r.output
    assert "'home'" not in r.output and "'work'" not in r.output and "'root'" not in r.output


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def test_network_to_the_hosts_loopback_is_unreachable(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    r = run("import socket\n"
            "for host in ('127.0.0.1', 'localhost'):\n"
            "    s = socket.socket(); s.settimeout(2)\n"
            f"    try:\n        s.connect((host, {port})); print('connected', host)\n"
            "    except OSError as e:\n        print('refused', host, e.errno)\n")
    assert "connected" not in r.output and "refused 127.0.0.1" in r.output, r
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody knocked


def test_output_is_capped_and_the_flood_killed() -> None:
    r = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=20.0)
    assert not r.passed and "output over" in r.output and len(r.output) < 20_000, r.status


def test_tmp_is_size_capped() -> None:
    r = run("import os\nn = 0\ntry:\n    while True:\n        with open(f'/tmp/f{n}', 'wb') as f:\n"
            "            f.write(b'x' * (8 << 20))\n        n += 1\nexcept OSError as e:\n"
            "    print('full after', n, e.errno)\n", timeout_s=20.0)
    assert "full after" in r.output, r
    cap_mib = bwrap.MemoryBudget.of(256).tmp_bytes >> 20  # run()'s budget; every writable place: test_sandbox_memory
    assert int(r.output.split("full after")[1].split()[0]) * 8 <= cap_mib


TASK = {"prompt": "from typing import List\nimport math\n\ndef norm(xs: List[float]) -> float:\n",
        "entry_point": "norm",
        "test": "def check(f):\n    assert abs(f([3.0, 4.0]) - 5.0) < 1e-9\n    assert f([]) == 0.0\n"}


def test_humaneval_verifier_passes_correct_and_fails_wrong_programs() -> None:
    good = "    return math.sqrt(sum(x * x for x in xs))\n"
    items = [(TASK, good), (TASK, "    return sum(xs)\n"), (TASK, "    return (\n"), (TASK, good)]
    assert verify_many(get_verifier("code"), items, workers=2, timeout_s=10.0) == [True, False, False, True]


def test_without_proc_the_pid_namespace_still_contains_an_escape(monkeypatch: pytest.MonkeyPatch,
                                                                 sandbox: bwrap.Isolation) -> None:
    """The fallback a container forbidding ``--proc`` gets: same namespaces, no /proc."""
    no_proc = bwrap.Isolation(sandbox.bwrap, sandbox.python, False, sandbox.drop_to)
    assert bwrap._try(no_proc) == (True, "")
    monkeypatch.setattr(bwrap, "isolation", lambda: (no_proc, ""))
    mark = token()
    r = run(f"import os, time\nprint(os.path.exists('/proc/1'), flush=True)\nif os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv('/bin/sleep', ['sleep', '{mark}'])\ntime.sleep(120)\n", timeout_s=2.0)
    assert r.status == "timeout" and "False" in r.output, r
    assert survivors(mark) == []


def test_no_bwrap_refuses_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bwrap.BWRAP_ENV, "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*eval.allow_unsandboxed_code: true"):
        run_python("print(1)")
    with pytest.raises(SandboxUnavailable):
        get_verifier("code").check(TASK, "    return 0.0\n", {})
    assert require_sandbox(True).startswith("UNSANDBOXED")
    good = "    return math.sqrt(sum(x * x for x in xs))\n"
    opts = {"allow_unsandboxed": True, "timeout_s": 10.0}
    assert get_verifier("code").check(TASK, good, opts) is True
    assert get_verifier("code").check(TASK, "    return 1.0\n", opts) is False
    signal.getsignal(signal.SIGTERM)  # the evaluator is untouched


def test_the_sandboxed_command_has_every_isolation_flag(sandbox: bwrap.Isolation) -> None:
    cmd = bwrap.command(sandbox, 3)
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--clearenv", "--tmpfs"):
        assert flag in cmd
    assert cmd[cmd.index("--uid") + 1] == "65534" and "--bind" not in cmd  # nothing writable from the host
