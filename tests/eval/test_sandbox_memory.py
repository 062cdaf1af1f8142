"""The sandbox bounds memory everywhere (issue 23, point 4), under real bubblewrap.

Before: bwrap's own root and ``/dev`` (with ``/dev/shm``) were RAM file systems of half the host's memory,
writable by the program (1.2 GB written in 3 s), and an anonymous memory file (``memfd_create``) could hold
16 MiB per descriptor outside every limit. Now a program that has switched the audit hook off finds every mount
it can see, fills each one it can write, and the only writable places are ``/tmp`` and ``/dev/shm``, each
stopping with ``ENOSPC`` at its share of the budget (``tmp + shm + address space == memory_mb``).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from hdpo_core.eval import bwrap, seccomp
from hdpo_core.eval.sandbox import run_python

DEFEAT_HOOK = "_PROC_EVENTS.clear(); _WRITE_EVENTS.clear(); _root = ''\n"
BUDGET_MB = 256

FILL = r'''
import errno, json, os, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # RLIMIT_FSIZE: a file over 16 MiB fails with EFBIG, not a signal
mounts = {line.split()[4] for line in open("/proc/self/mountinfo")}
places = sorted(mounts | {"/", "/dev", "/dev/shm", "/dev/mqueue", "/tmp", "/sandbox", os.getcwd()})
out = {}
chunk = b"x" * (1 << 20)
for place in places:
    written, n, err = 0, 0, None
    try:
        while True:
            with open(os.path.join(place, f".fill{n}"), "wb") as fh:
                for _ in range(8):  # 8 MiB files: under RLIMIT_FSIZE
                    written += fh.write(chunk)
                    fh.flush()
            n += 1
    except OSError as exc:
        err = exc.errno
    st = os.statvfs(place) if os.path.isdir(place) else None
    out[place] = [written, errno.errorcode.get(err, str(err)), st.f_blocks * st.f_frsize if st else None]
    for i in range(n + 1):  # free it again, so the next place is filled from the same start
        try:
            os.unlink(os.path.join(place, f".fill{i}"))
        except OSError:
            pass
out["RLIMIT_AS"] = resource.getrlimit(resource.RLIMIT_AS)[0]
with open("/dev/null", "wb") as fh:
    fh.write(b"devices still work")
print("RESULT", json.dumps(out))
'''


@pytest.fixture(autouse=True)
def sandbox() -> bwrap.Isolation:
    iso, why = bwrap.isolation()
    if iso is None or not iso.proc:
        pytest.fail(f"bubblewrap sandbox with /proc unavailable ({why}); apt-get install -y bubblewrap")
    return iso


def test_the_budget_adds_up() -> None:
    for mb in (64, 256, 512, 4096):
        b = bwrap.MemoryBudget.of(mb)
        assert b.tmp_bytes + b.shm_bytes + b.address_space == mb << 20
        assert 0 < b.tmp_bytes <= bwrap.TMP_BYTES and 0 < b.shm_bytes <= bwrap.SHM_BYTES
    assert bwrap.MemoryBudget.of(512).address_space == 432 << 20


def test_every_writable_place_stops_at_its_cap() -> None:
    host_shm = sorted(os.listdir("/dev/shm"))
    r = run_python(DEFEAT_HOOK + FILL, timeout_s=60, memory_mb=BUDGET_MB)
    assert r.passed, r
    found = json.loads(r.output.split("RESULT ", 1)[1].splitlines()[0])
    budget = bwrap.MemoryBudget.of(BUDGET_MB)
    assert found.pop("RLIMIT_AS") == budget.address_space
    writable = {place: v for place, v in found.items() if v[0] > 0}
    assert sorted(writable) == ["/dev/shm", "/tmp"], found
    for place, cap in (("/tmp", budget.tmp_bytes), ("/dev/shm", budget.shm_bytes)):
        written, err, size = writable[place]
        assert err == "ENOSPC" and size == cap, (place, writable[place])
        assert cap - (1 << 20) <= written <= cap, (place, written, cap)  # a partial last MiB may not fit
    refused = {place: v[1] for place, v in found.items() if place not in writable}
    assert "/" in refused and "/dev" in refused and "/sandbox" in refused, found
    assert set(refused.values()) <= {"EROFS", "EACCES", "ENOENT", "EPERM", "ENOTDIR"}, refused
    assert sorted(os.listdir("/dev/shm")) == host_shm  # the sandbox's /dev/shm is its own


def test_memory_outside_any_file_system_is_refused() -> None:
    """memfd_create and System V shared memory fail with EPERM (seccomp); POSIX message queues get no memory
    (RLIMIT_MSGQUEUE 0). A fresh interpreter runs the calls, so not even the prelude's hook is in the way."""
    code = ("import ctypes, errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "def err(r): return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]\n"
            "try:\n    os.memfd_create('x'); print('memfd ok')\nexcept OSError as e:\n"
            "    print('memfd', errno.errorcode[e.errno])\n"
            "print('shmget', err(libc.shmget(0, 1 << 20, 0o1600)))\n"
            "libc.mq_open.restype = ctypes.c_int\n"
            "print('mq_open', err(libc.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, None)))\n")
    r = run_python(DEFEAT_HOOK + f"import os, sys\nos.execv(sys.executable, [sys.executable, '-I', '-c', {code!r}])\n",
                   timeout_s=30, memory_mb=BUDGET_MB)
    assert "memfd EPERM" in r.output and "shmget EPERM" in r.output, r
    assert "mq_open ok" not in r.output and "mq_open" in r.output, r


def test_the_seccomp_program_is_well_formed() -> None:
    """Nine instructions; each jump lands on the allow or the EPERM return; unknown machines get None."""
    import struct

    for machine in ("x86_64", "aarch64"):
        prog = seccomp.program(machine)
        assert prog is not None and len(prog) == 9 * 8
        insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
        assert insns[-2] == (0x06, 0, 0, 0x7FFF0000) and insns[-1] == (0x06, 0, 0, 0x50000 | errno.EPERM)
        for i, (code, jt, jf, _) in enumerate(insns):
            if code in (0x15, 0x35):
                assert i + 1 + max(jt, jf) == len(insns) - 1  # to the EPERM return, or fall through
    assert seccomp.program("riscv64") is None


def test_no_fill_file_is_left_on_the_host(tmp_path: Path) -> None:
    """The sandbox's RAM file systems vanish with it: nothing under the host's temp folder afterwards."""
    before = set(os.listdir("/tmp"))
    r = run_python(DEFEAT_HOOK + "open('/tmp/left', 'wb').write(b'x' * (4 << 20)); print('wrote')\n",
                   timeout_s=30, memory_mb=BUDGET_MB)
    assert "wrote" in r.output, r
    assert not any(name == "left" for name in set(os.listdir("/tmp")) - before)
