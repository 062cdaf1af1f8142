"""Two runs started at the same instant on the same new folder (issue 23, section 2): the lock is taken
before the folder is claimed, so exactly one runs and the other says "in use by pid N" (N the winner's pid),
never "holds files that hdpo-tune did not write".

Many trials drive :func:`service.runfolder.ownership.open_folder` (what ``hdpo-tune run`` calls first) in two long-lived
processes released together by a barrier; both keep what they got until both have reported, so the two
attempts always overlap. One real pair of ``hdpo-tune run`` processes checks the same through the console
script.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
from pathlib import Path

import pytest

from service.runfolder.lock import InUse
from tests.reliability._jobs import write_job
from tests.reliability._lockrace import contender
from tests.reliability._proc import HDPO_TUNE, env

TRIALS = 100


def test_simultaneous_opens_end_with_one_winner_and_one_in_use(tmp_path: Path) -> None:
    folders = [str(tmp_path / f"t{i:03d}" / "run") for i in range(TRIALS)]
    ctx = multiprocessing.get_context("spawn")  # no torch in the contenders: they start fast
    start, done, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=contender, args=(folders, start, done, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results: dict[str, list[tuple[int, str]]] = {}
    for _ in range(2 * TRIALS):
        folder, pid, what = out.get(timeout=300)
        results.setdefault(folder, []).append((pid, what))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for folder, got in results.items():
        winners = [pid for pid, what in got if what == "ok"]
        losers = [what for _, what in got if what != "ok"]
        assert len(winners) == 1 and len(losers) == 1, (folder, got)
        assert losers[0] == (f"output.dir: {folder} is in use by pid {winners[0]} (another hdpo-tune run); wait "
                             "for it to finish, or choose another output.dir"), (folder, got)


def test_two_real_runs_started_together(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=4)
    procs = [subprocess.Popen([str(HDPO_TUNE), "run", str(job)], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert not any("did not write" in e for e in errs), errs
    if sorted(codes) == [0, 2]:  # they overlapped: the loser names the winner
        winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
        lines = re.findall(r"^error: .*$", errs[loser], re.M)
        assert len(lines) == 1 and f"in use by pid {procs[winner].pid}" in lines[0], errs[loser]
    else:  # the second started after the first had finished: it found every stage done
        assert codes == [0, 0] and any("already done" in e for e in errs), (codes, errs)


def test_the_lock_handed_to_a_job_process_is_its_own(tmp_path: Path) -> None:
    """``hdpo-tune serve`` takes the folder's lock and hands the descriptor to the job process: the job takes it
    as its own (while the server still holds its copy, so a new lock would fail), holds it after the server
    closes its copy, and the kernel frees it when the job dies."""
    import os
    import signal
    import sys

    from service.runfolder import ownership
    from service.runfolder.lock import FD_ENV, lock_fd, lock_held, read_pid

    run = ownership.open_folder(tmp_path / "run")
    ownership.RunLock(run).release()
    fd = lock_fd(run)
    code = ("import sys, time; from pathlib import Path; from service.runfolder.ownership import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(run)], env={**env(), FD_ENV: str(fd)},
                             pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held", child.communicate()[1]
        os.close(fd)  # the server's copy goes; the job's stays
        assert lock_held(run) is True and read_pid(run) == child.pid
        with pytest.raises(InUse, match=f"in use by pid {child.pid}"):
            lock_fd(run)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert lock_held(run) is False
