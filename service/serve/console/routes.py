"""The console's pages (``/``, ``/jobs/ID``, ``/compare``, ``/new``) and the small JSON API they call
(``/console/api/...``). The same routes serve ``hdpo-tune serve`` (the signed-in key's jobs, see
:mod:`.session`) and ``hdpo-tune ui`` (local run folders, read-only); which one is decided by the app state the
two set up (:func:`install`)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy.orm import Session

from hdpo_core.layout import METRICS

from .. import store
from ..db import ApiKey
from ..deps import server
from ..errors import ApiError
from ..schemas import FileObject, FineTuningJob
from .local import Catalogue, LocalView
from .runinfo import inside
from .schemas import (
    Comparison,
    ConsoleEvents,
    ConsoleJobDetails,
    ConsoleJobs,
    Files,
    MetricSeries,
    Names,
    SessionInfo,
    SignedIn,
    SignedOut,
    Sweeps,
)
from .series import DEFAULT_POINTS, series_payload
from .served import ServedView
from .session import COOKIE, cookie_args, cross_site, make_token, read_token
from .view import NotFound, View, compare

STATIC = Path(__file__).parent / "static"
router = APIRouter()
api = "/console/api"


def _secret(request: Request) -> bytes:
    secret = request.app.state.console_secret
    return secret if isinstance(secret, bytes) else b""


def _catalogue(request: Request) -> Catalogue | None:
    catalogue = request.app.state.console_catalogue
    return catalogue if isinstance(catalogue, Catalogue) else None


def _key(request: Request, db: Session) -> ApiKey | None:
    key_id = read_token(_secret(request), request.cookies.get(COOKIE))
    return store.live_key(db, key_id) if key_id else None


def _signin_needed() -> ApiError:
    return ApiError(401, "Sign in with an API key (create one with `hdpo-tune serve keys create NAME`).",
                    code="not_signed_in")


def get_view(request: Request) -> Generator[View]:
    """The caller's view: every local run under ``hdpo-tune ui``, else the signed-in key's jobs (401 without)."""
    catalogue = _catalogue(request)
    if catalogue is not None:
        yield LocalView(catalogue)
        return
    ctx = server(request)
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


def _job(view: View, job_id: str) -> ConsoleJobDetails:
    try:
        return ConsoleJobDetails.model_validate(view.job(job_id))
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None


def _writable(view: View) -> ServedView:
    if not isinstance(view, ServedView):
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


@router.get(f"{api}/session", response_model=SessionInfo)
def session_info(request: Request) -> SessionInfo:
    if _catalogue(request) is not None:
        return SessionInfo(mode="local", signed_in=True, read_only=True, name=None)
    with server(request).sessions() as db:
        key = _key(request, db)
        return SessionInfo(mode="serve", signed_in=key is not None, read_only=False,
                           name=key.name if key else None)


@router.post(f"{api}/session", dependencies=[Depends(guard)], response_model=SignedIn)
def sign_in(request: Request, response: Response, body: SignIn) -> SignedIn:
    if _catalogue(request) is not None:
        raise ApiError(405, "hdpo-tune ui needs no sign-in", code="read_only")
    with server(request).sessions() as db:
        row = store.find_key(db, body.key.strip())
        if row is None:
            raise ApiError(401, "Incorrect API key.", param="key", code="invalid_api_key")
        response.set_cookie(COOKIE, make_token(_secret(request), row.id), **cookie_args(request))
        return SignedIn(name=row.name)


@router.delete(f"{api}/session", dependencies=[Depends(guard)], response_model=SignedOut)
def sign_out(request: Request, response: Response) -> SignedOut:
    response.delete_cookie(COOKIE, **cookie_args(request))
    return SignedOut()


# ---- reads -----------------------------------------------------------------------------------------------------
@router.get(f"{api}/jobs", response_model=ConsoleJobs)
def jobs(view: ViewDep) -> ConsoleJobs:
    return ConsoleJobs.model_validate({"data": view.jobs(), "read_only": view.read_only})


@router.get(f"{api}/jobs/{{job_id}}", response_model=ConsoleJobDetails)
def job(view: ViewDep, job_id: str) -> ConsoleJobDetails:
    return _job(view, job_id)


@router.get(f"{api}/jobs/{{job_id}}/metrics", response_model=MetricSeries)
def metrics(view: ViewDep, job_id: str, after: int | None = None, points: int = DEFAULT_POINTS) -> MetricSeries:
    """Every metric's curve, downsampled keeping extremes; ``after=STEP`` returns only later steps."""
    if not 10 <= points <= 20000:
        raise ApiError(400, "points: use 10 to 20000", param="points")
    try:
        run = view.run_dir(job_id)
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None
    path = inside(run, METRICS)
    if path is None:
        return MetricSeries(rows=0, last_step=after, downsampled=False, curves={})
    return MetricSeries.model_validate(series_payload(path, after, points))


@router.get(f"{api}/jobs/{{job_id}}/events", response_model=ConsoleEvents)
def events(view: ViewDep, job_id: str) -> ConsoleEvents:
    try:
        return ConsoleEvents.model_validate({"data": view.events(job_id)})
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None


@router.get(f"{api}/jobs/{{job_id}}/artifacts")
def artifacts(view: ViewDep, job_id: str, part: str) -> StreamingResponse:
    """One part of a finished run (``final``, ``merged``, ``onnx``, ``gguf``, ``eval``) as a tar stream."""
    from ..native_api import check_whole, tar_stream  # the API's own tar writer: regular files, no links

    info = _job(view, job_id)
    if info.state == "running" or info.status in ("queued", "running", "validating_files"):
        raise ApiError(409, f"{job_id} is still running; download once it has finished", code="job_not_finished")
    if part not in info.parts:
        raise ApiError(400, f"part: '{part[:40]}' is not available; this job has {info.parts}", param="part")
    check_whole(view.run_dir(job_id), [part], job_id)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{part}.tar"'}
    return StreamingResponse(tar_stream(view.run_dir(job_id), [part], job_id), media_type="application/x-tar",
                             headers=headers)


@router.get(f"{api}/sweeps", response_model=Sweeps)
def sweeps(view: ViewDep) -> Sweeps:
    return Sweeps.model_validate({"data": view.sweeps()})


@router.get(f"{api}/compare", response_model=Comparison)
def compare_jobs(view: ViewDep, ids: str, select: str | None = None) -> Comparison:
    wanted = [i for i in ids.split(",") if i][:24]
    try:
        return Comparison.model_validate(compare(view, wanted, select or None))
    except NotFound as exc:
        raise ApiError(404, f"No such job: {str(exc)[:80]}", param="ids", code="not_found") from None
    except ValueError as exc:
        raise ApiError(400, str(exc), param="select") from None


# ---- changes (hdpo-tune serve only) ----------------------------------------------------------------------------
@router.get(f"{api}/models", response_model=Names)
def models(view: ViewDep) -> Names:
    served = _writable(view)
    roots = served.config.model_roots
    names = sorted({p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir()})
    done = [j["fine_tuned_model"] for j in served.jobs() if j.get("fine_tuned_model")]
    return Names(data=names + done)


@router.get(f"{api}/files", response_model=Files)
def files(view: ViewDep) -> Files:
    from ..files_api import file_object

    served = _writable(view)
    return Files(data=[file_object(r) for r in store.recent_files(served.db, served.key.id, 200)])


@router.post(f"{api}/files", dependencies=[Depends(guard)], response_model=FileObject)
def upload(request: Request, view: ViewDep, file: Annotated[UploadFile, File()],
           purpose: Annotated[str, Form()]) -> FileObject:
    from ..files_api import store_upload

    served = _writable(view)
    return store_upload(server(request), served.db, served.key, file, purpose)


class NewJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict[str, JsonValue]
    suffix: str | None = None
    metadata: dict[str, str] | None = None


@router.post(f"{api}/jobs", dependencies=[Depends(guard)], response_model=FineTuningJob)
def create(request: Request, view: ViewDep, body: NewJob) -> FineTuningJob:
    from ..native_api import NativeJob, create_native

    served = _writable(view)
    return create_native(server(request), served.db, served.key,
                         NativeJob(spec=body.spec, suffix=body.suffix, metadata=body.metadata))


@router.post(f"{api}/jobs/{{job_id}}/cancel", dependencies=[Depends(guard)], response_model=FineTuningJob)
async def cancel(view: ViewDep, job_id: str) -> FineTuningJob:
    from ..jobs_api import cancel as api_cancel

    served = _writable(view)
    try:
        served.run_dir(job_id)
    except NotFound:
        raise ApiError(404, f"No such job: {job_id[:80]}", param="id", code="not_found") from None
    return await api_cancel(served.db, served.key, job_id)
