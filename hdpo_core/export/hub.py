"""Push a folder to the Hugging Face Hub (huggingface_hub 2.x), with privacy check and bounded retries.

The client is injectable (:class:`HubClient`, satisfied by ``huggingface_hub.HfApi``) so tests run with a
recording fake under ``HF_HUB_OFFLINE=1``. The token comes only from ``HF_TOKEN`` and is never logged:
every error message passes through :func:`redact`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hdpo_core.errors import InputError, RunError

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HubClient(Protocol):
    """The four ``HfApi`` calls the push uses."""

    def create_repo(self, repo_id: str, *, private: bool, repo_type: str, exist_ok: bool) -> object: ...
    def repo_info(self, repo_id: str, *, repo_type: str) -> object: ...
    def create_branch(self, repo_id: str, *, branch: str, repo_type: str, exist_ok: bool) -> object: ...
    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str,
        path_in_repo: str | None,
        commit_message: str,
        repo_type: str,
        revision: str | None,
        create_pr: bool,
    ) -> Any: ...


@dataclass(frozen=True)
class Upload:
    """One ``upload_folder`` call: local folder -> ``path_in_repo`` (None = repo root)."""

    folder: Path
    path_in_repo: str | None


def hf_token() -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise InputError(
            "HF_TOKEN is not set: export a Hugging Face write token as HF_TOKEN to push (never in the spec)"
        )
    return token


def redact(text: str) -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    return text.replace(token, "***") if token else text


def is_transient(exc: BaseException) -> bool:
    """HTTP 408/429/5xx, timeouts and connection errors are worth retrying; 4xx are not."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):  # a ConnectionError subclass, but retrying cannot help
        return False
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUS or status >= 500
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    try:
        import httpx  # huggingface_hub's HTTP client (hub 1.x/2.x)
    except ImportError:  # pragma: no cover - a dependency of huggingface_hub
        return False
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def with_retries(
    what: str,
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> T:
    """Call ``fn``; on a transient error wait ``base_delay * 2**i`` and retry, up to ``attempts`` calls."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if _local_file_error(exc):  # reading the folder failed, not the Hub: the caller names the file
                raise
            if not is_transient(exc):
                raise RunError(f"Hub {what} failed: {redact(_describe(exc))}") from None
            if i == attempts - 1:
                raise RunError(
                    f"Hub {what} failed after {attempts} attempts: {redact(_describe(exc))}; "
                    "the Hub may be down, rerun `hdpo-tune push RUN_DIR` later (uploads resume)"
                ) from None
            delay = base_delay * 2**i
            log(f"Hub {what}: transient error ({redact(_describe(exc))}), retrying in {delay:g}s")
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _local_file_error(exc: BaseException) -> bool:
    """An OS error on a named local file (a failing disk under a file being uploaded), not a network error."""
    return (isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None
            and not isinstance(exc, ConnectionError | TimeoutError))


def _describe(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}{f' HTTP {status}' if status else ''}: {first}"


def push(
    client: HubClient,
    *,
    repo_id: str,
    private: bool,
    uploads: list[Upload],
    commit_message: str,
    revision: str | None,
    create_pr: bool,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> list[Any]:
    """create_repo(exist_ok) -> privacy check -> optional branch -> one upload_folder per :class:`Upload`.

    With ``create_pr`` the first upload opens the PR and later uploads go to its ``refs/pr/N`` revision.
    """

    def retry(what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, fn, sleep=sleep, log=log)

    retry(
        "create_repo", lambda: client.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    )
    info = retry("repo_info", lambda: client.repo_info(repo_id, repo_type="model"))
    actual = getattr(info, "private", None)
    if actual is not None and bool(actual) != private:
        want, have = ("private", "public") if private else ("public", "private")
        raise InputError(
            f"hub.private: the spec asks for a {want} repo but {repo_id} already exists and is {have}; "
            f"change its visibility on the Hub or set hub.private: {str(not private).lower()}"
        )
    if revision:
        retry(
            "create_branch",
            lambda: client.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True),
        )
    results, target = [], revision
    for up in uploads:
        pr_now = create_pr and (target is None or not target.startswith("refs/pr/"))
        res = retry(
            f"upload_folder {up.folder.name}",
            partial(
                client.upload_folder,
                repo_id=repo_id,
                folder_path=str(up.folder),
                path_in_repo=up.path_in_repo,
                commit_message=commit_message,
                repo_type="model",
                revision=target,
                create_pr=pr_now,
            ),
        )
        if pr_now and getattr(res, "pr_revision", None):
            target = res.pr_revision
        results.append(res)
    return results
