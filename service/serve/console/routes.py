"""The console's pages (``/``, ``/jobs/ID``, ``/compare``, ``/new``) and the small JSON API they call
(``/console/api/...``). The same routes serve ``hdpo-tune serve`` (the signed-in key's jobs, see
:mod:`.session`) and ``hdpo-tune ui`` (local run folders, read-only); which one is decided by the app state the
two set up (:func:`install`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from hdpo_core.layout import METRICS

from ..db import ApiKey
from ..errors import ApiError
from .local import Catalogue, LocalView
from .runinfo import inside
from .series import DEFAULT_POINTS, series_payload
from .session import COOKIE, cookie_args, cross_site, make_token, read_token
from .view import NotFound, View, compare

STATIC = Path(__file__).parent / "static"
router = APIRouter()
api = "/console/api"


def _key(request: Request, db: Any) -> ApiKey | None:
    key_id = read_token(request.app.state.console_secret, request.cookies.get(COOKIE))
    row = db.get(ApiKey, key_id) if key_id else None
    return row if row is not None and not row.revoked else None


def _signin_needed() -> ApiError:
    return ApiError(401, "Sign in with an API key (create one with `hdpo-tune serve keys create NAME`).",
                    code="not_signed_in")


def get_view(request: Request) -> Iterator[View]:
    """The caller's view: every local run under ``hdpo-tune ui``, else the signed-in key's jobs (401 without)."""
    catalogue: Catalogue | None = request.app.state.console_catalogue
    if catalogue is not None:
        yield LocalView(catalogue)
        return
    from .served import ServedView

    ctx = request.app.state.ctx
    with ctx.sessions() as db:
        key = _key(request, db)
        if key is None:
            raise _signin_needed()
        yield ServedView(ctx.config, db, key)


def guard(request: Request) -> None:
    """Cross-site protection for every state-changing console request."""
    why = cross_site(request)
    if why:
        raise ApiError(403, why, code="cross_site_refused")


ViewDep = Annotated[View, Depends(get_view)]


def _job(view: View, job_id: str) -> dict[str, Any]:
    try:
        return view.job(job_id)
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None


def _writable(view: View) -> Any:
    if view.read_only:
        raise ApiError(405, "hdpo-tune ui is read-only; start jobs with hdpo-tune serve", code="read_only")
    return view


# ---- pages -------------------------------------------------------------------------------------------------
def _page(status: int = 200) -> FileResponse:
    return FileResponse(STATIC / "index.html", status_code=status, media_type="text/html")


@router.get("/", include_in_schema=False)
@router.get("/compare", include_in_schema=False)
@router.get("/new", include_in_schema=False)
@router.get("/signin", include_in_schema=False)
def page() -> FileResponse:
    return _page()


@router.get("/jobs/{job_id}", include_in_schema=False)
def job_page(request: Request, job_id: str) -> FileResponse:
    """The job page; a 404 status for a job that is not the caller's (the page then says so)."""
    views = get_view(request)
    try:
        next(views).run_dir(job_id)
    except ApiError:
        return _page()  # not signed in: the page shows the sign-in form
    except NotFound:
        return _page(404)
    finally:
        views.close()
    return _page()


# ---- session -------------------------------------------------------------------------------------------------
class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str


@router.get(f"{api}/session")
def session_info(request: Request) -> dict[str, Any]:
    if request.app.state.console_catalogue is not None:
        return {"mode": "local", "signed_in": True, "read_only": True, "name": None}
    with request.app.state.ctx.sessions() as db:
        key = _key(request, db)
        return {"mode": "serve", "signed_in": key is not None, "read_only": False,
                "name": key.name if key else None}


@router.post(f"{api}/session", dependencies=[Depends(guard)])
def sign_in(request: Request, body: SignIn) -> JSONResponse:
    from ..keys import find_key

    if request.app.state.console_catalogue is not None:
        raise ApiError(405, "hdpo-tune ui needs no sign-in", code="read_only")
    with request.app.state.ctx.sessions() as db:
        row = find_key(db, body.key.strip())
        if row is None:
            raise ApiError(401, "Incorrect API key.", param="key", code="invalid_api_key")
        out = JSONResponse({"signed_in": True, "name": row.name})
        out.set_cookie(COOKIE, make_token(request.app.state.console_secret, row.id), **cookie_args(request))
        return out


@router.delete(f"{api}/session", dependencies=[Depends(guard)])
def sign_out(request: Request) -> JSONResponse:
    out = JSONResponse({"signed_in": False})
    out.delete_cookie(COOKIE, **cookie_args(request))
    return out


# ---- reads -----------------------------------------------------------------------------------------------------
@router.get(f"{api}/jobs")
def jobs(view: ViewDep) -> dict[str, Any]:
    return {"data": view.jobs(), "read_only": view.read_only}


@router.get(f"{api}/jobs/{{job_id}}")
def job(view: ViewDep, job_id: str) -> dict[str, Any]:
    return _job(view, job_id)


@router.get(f"{api}/jobs/{{job_id}}/metrics")
def metrics(view: ViewDep, job_id: str, after: int | None = None, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """Every metric's curve, downsampled keeping extremes; ``after=STEP`` returns only later steps."""
    if not 10 <= points <= 20000:
        raise ApiError(400, "points: use 10 to 20000", param="points")
    try:
        run = view.run_dir(job_id)
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None
    path = inside(run, METRICS)
    if path is None:
        return {"rows": 0, "last_step": after, "downsampled": False, "curves": {}}
    return series_payload(path, after, points)


@router.get(f"{api}/jobs/{{job_id}}/events")
def events(view: ViewDep, job_id: str) -> dict[str, Any]:
    try:
        return {"data": view.events(job_id)}
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None


@router.get(f"{api}/jobs/{{job_id}}/artifacts")
def artifacts(view: ViewDep, job_id: str, part: str) -> StreamingResponse:
    """One part of a finished run (``final``, ``merged``, ``onnx``, ``gguf``, ``eval``) as a tar stream."""
    from ..native_api import _tar_stream, check_whole  # the API's own tar writer: regular files, no links

    info = _job(view, job_id)
    if info["state"] == "running" or info.get("status") in ("queued", "running", "validating_files"):
        raise ApiError(409, f"{job_id} is still running; download once it has finished", code="job_not_finished")
    if part not in info["parts"]:
        raise ApiError(400, f"part: '{part[:40]}' is not available; this job has {info['parts']}", param="part")
    check_whole(view.run_dir(job_id), [part], job_id)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{part}.tar"'}
    return StreamingResponse(_tar_stream(view.run_dir(job_id), [part], job_id), media_type="application/x-tar",
                             headers=headers)


@router.get(f"{api}/sweeps")
def sweeps(view: ViewDep) -> dict[str, Any]:
    return {"data": view.sweeps()}


@router.get(f"{api}/compare")
def compare_jobs(view: ViewDep, ids: str, select: str | None = None) -> dict[str, Any]:
    wanted = [i for i in ids.split(",") if i][:24]
    try:
        return compare(view, wanted, select or None)
    except NotFound as exc:
        raise ApiError(404, f"No such job: {str(exc)[:80]}", param="ids", code="not_found") from None
    except ValueError as exc:
        raise ApiError(400, str(exc), param="select") from None


# ---- changes (hdpo-tune serve only) ----------------------------------------------------------------------------
@router.get(f"{api}/models")
def models(request: Request, view: ViewDep) -> dict[str, Any]:
    _writable(view)
    roots = request.app.state.ctx.config.model_roots
    names = sorted({p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir()})
    done = [j["fine_tuned_model"] for j in view.jobs() if j.get("fine_tuned_model")]
    return {"data": names + done}


@router.get(f"{api}/files")
def files(view: ViewDep) -> dict[str, Any]:
    from ..db import FileRow
    from ..files_api import file_object

    served = _writable(view)
    rows = served.db.scalars(select(FileRow).where(FileRow.owner == served.key.id).order_by(FileRow.seq.desc())
                             .limit(200))
    return {"data": [file_object(r) for r in rows]}


@router.post(f"{api}/files", dependencies=[Depends(guard)])
def upload(request: Request, view: ViewDep, file: Annotated[UploadFile, File()],
           purpose: Annotated[str, Form()]) -> dict[str, Any]:
    from ..files_api import upload as api_upload

    served = _writable(view)
    return api_upload(request.app.state.ctx, served.db, served.key, file, purpose)


class NewJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]
    suffix: str | None = None
    metadata: dict[str, str] | None = None


@router.post(f"{api}/jobs", dependencies=[Depends(guard)])
def create(request: Request, view: ViewDep, body: NewJob) -> dict[str, Any]:
    from ..native_api import NativeJob, create_native

    served = _writable(view)
    return create_native(request.app.state.ctx, served.db, served.key,
                         NativeJob(spec=body.spec, suffix=body.suffix, metadata=body.metadata))


@router.post(f"{api}/jobs/{{job_id}}/cancel", dependencies=[Depends(guard)])
async def cancel(view: ViewDep, job_id: str) -> dict[str, Any]:
    from ..jobs_api import cancel as api_cancel

    served = _writable(view)
    try:
        served.run_dir(job_id)
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None
    return await api_cancel(served.db, served.key, job_id)

