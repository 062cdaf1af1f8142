"""The process of the lock race test: only the run folder code is imported (no torch), so it starts fast."""

from __future__ import annotations

import os
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from hdpo_core.errors import InputError
from service.runfolder.ownership import RunLock, open_folder


def contender(folders: list[str], start: Barrier, done: Barrier, out: Any) -> None:
    """Open each folder at the same instant as the other contender; report what happened."""
    for folder in folders:
        start.wait()
        try:
            open_folder(Path(folder))
            out.put((folder, os.getpid(), "ok"))
        except InputError as exc:
            out.put((folder, os.getpid(), exc.message))
        done.wait()  # hold the lock until both have reported
        RunLock(Path(folder)).release()
