"""Two runs started at the same instant on the same new folder (issue 23, section 2): the lock is taken
before the folder is claimed, so exactly one runs and the other says "in use by pid N" (N the winner's pid),
never "holds files that hdpo-tune did not write".

Many trials drive :func:`service.ownership.open_folder` (what ``hdpo-tune run`` calls first) in two long-lived
processes released together by a barrier; both keep what they got until both have reported, so the two
attempts always overlap. One real pair of ``hdpo-tune run`` processes checks the same through the console
script.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
from pathlib import Path

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
