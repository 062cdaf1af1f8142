"""Fault injection for subprocess tests: ``HDPO_FAULT=kind:nth:errno[:match]`` makes the ``nth`` write of a kind
fail with ``errno``, inside the real ``hdpo-tune`` console script (this folder goes first on PYTHONPATH).

* ``safetensors`` -- ``safetensors.torch.save_file`` raises safetensors' own ``SafetensorError`` (not an
  ``OSError``, as the real one on a full disk), with the OS error in its text. Patched before anything imports
  it, so checkpoints, peft's ``save_pretrained`` and transformers' see the same function.
* ``open`` -- opening for writing a path that contains ``match`` (``open``, ``Path.write_*``, ``os.open`` as
  used by ``tempfile.mkstemp``) raises ``OSError(errno, strerror, path)``.
* ``read`` -- the same for opening a path for reading (a failing disk under a file the push uploads).

``HDPO_FAKE_HUB=DIR`` replaces ``huggingface_hub.HfApi`` with a stand-in that "uploads" by reading every file of
the folder (as the real client does to hash it) and copying it to ``DIR/<path_in_repo>``: the push stage runs
end to end in a subprocess, offline.

``HDPO_KILL_AFTER=K[:kind:match]`` SIGKILLs the process right after the ``K``-th file written, renamed or removed
by the artifact mechanism and the atomic writers (``hdpo_core.io.note``), counting only operations of ``kind``
(``write``, ``rename``, ``remove``) on a path containing ``match`` when they are given; ``HDPO_OP_LOG=FILE`` appends one line per such
operation (``index kind path``, and for a ``status.json`` rename the stage it records), so a test counts each
stage's operations once and chooses its kill points.

Nothing else changes: the files really are written until the fault, so what is left afterwards is real.
"""

from __future__ import annotations

import builtins
import errno as _errno
import io
import os

_SPEC = os.environ.get("HDPO_FAULT", "")
if _SPEC:
    _kind, _nth, _code, *_rest = _SPEC.split(":", 3)
    _N, _ERRNO, _MATCH = int(_nth), getattr(_errno, _code), (_rest[0] if _rest else "")
    _calls = [0]

    def _due() -> bool:
        _calls[0] += 1
        return _calls[0] == _N

    if _kind == "safetensors":
        import safetensors.torch as _st
        from safetensors import SafetensorError

        _real_save = _st.save_file

        def _save_file(*args, **kwargs):  # type: ignore[no-untyped-def]
            if _due():
                raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(_ERRNO)} "
                                      f"(os error {_ERRNO})")
            return _real_save(*args, **kwargs)

        _st.save_file = _save_file
    elif _kind in ("open", "read"):
        _real_open, _real_os_open = builtins.open, os.open
        _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def _check(path: object, writing: bool) -> None:
            if writing != (_kind == "open") or not isinstance(path, str | os.PathLike):
                return
            name = os.fspath(path)
            if isinstance(name, str) and _MATCH in name and _due():
                raise OSError(_ERRNO, os.strerror(_ERRNO), name)

        def _open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
            _check(file, any(c in mode for c in "wax+"))
            return _real_open(file, mode, *args, **kwargs)

        def _os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            _check(path, bool(flags & _WRITE))
            return _real_os_open(path, flags, *args, **kwargs)

        builtins.open = io.open = _open
        os.open = _os_open

_KILL_SPEC = os.environ.get("HDPO_KILL_AFTER", "").split(":", 2)
_KILL_AFTER = int(_KILL_SPEC[0] or 0)
_KILL_KIND, _KILL_MATCH = (_KILL_SPEC[1], _KILL_SPEC[2]) if len(_KILL_SPEC) == 3 else ("", "")
_OP_LOG = os.environ.get("HDPO_OP_LOG", "")
if _KILL_AFTER or _OP_LOG:
    import json as _json
    import signal as _signal

    import hdpo_core.io as _hio

    _ops = [0, 0]  # every operation, those the kill counts

    def _after_op(kind, path):  # type: ignore[no-untyped-def]
        _ops[0] += 1
        if (not _KILL_KIND or kind == _KILL_KIND) and _KILL_MATCH in os.fspath(path):
            _ops[1] += 1
        if _OP_LOG:
            name = os.fspath(path)
            stage = ""
            if kind == "rename" and os.path.basename(name) == "status.json":
                try:
                    with open(name, encoding="utf-8") as fh:
                        st = _json.load(fh)
                    stage = f" {st.get('stage')}:{st.get('state')}"
                except (OSError, ValueError):
                    stage = " ?"
            fd = os.open(_OP_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{_ops[0]} {kind} {name}{stage}\n".encode())
            finally:
                os.close(fd)
        if _KILL_AFTER and _ops[1] == _KILL_AFTER:
            os.kill(os.getpid(), _signal.SIGKILL)

    _hio._after_op = _after_op

_HUB = os.environ.get("HDPO_FAKE_HUB", "")
if _HUB:
    import huggingface_hub as _hh

    class _FakeHfApi:
        """The four calls the push makes; the repo is the folder ``HDPO_FAKE_HUB``."""

        def __init__(self, token: str | None = None) -> None:
            self.token = token

        def create_repo(self, repo_id, **kwargs):  # type: ignore[no-untyped-def]
            os.makedirs(_HUB, exist_ok=True)

        def repo_info(self, repo_id, **kwargs):  # type: ignore[no-untyped-def]
            return type("Info", (), {"private": True})()

        def create_branch(self, repo_id, **kwargs):  # type: ignore[no-untyped-def]
            return None

        def upload_folder(self, *, folder_path, path_in_repo=None, **kwargs):  # type: ignore[no-untyped-def]
            root = os.path.join(_HUB, path_in_repo or "")
            for here, _dirs, files in os.walk(folder_path):
                for name in sorted(files):
                    src = os.path.join(here, name)
                    with open(src, "rb") as f:
                        data = f.read()
                    dst = os.path.join(root, os.path.relpath(src, folder_path))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    with open(dst, "wb") as f:
                        f.write(data)
            return type("CommitInfo", (), {"pr_revision": None})()

    _hh.HfApi = _FakeHfApi
