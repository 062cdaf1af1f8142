"""The declared response models against the official ``openai`` SDK's own types: every field the SDK declares is
one of ours, real responses (each job state, events with data, checkpoints, pages) validate with the SDK's
pydantic models, our only additions are the named extensions, and the OpenAPI document gives every JSON route
its model. In process (``TestClient``, ``workers=0``: nothing trains)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.pagination import SyncCursorPage
from openai.types import FileDeleted, FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from pydantic import BaseModel

from service.serve import schemas
from service.serve.app import create_app
from service.serve.config import ServeConfig
from service.serve.db import JobRow
from service.serve.store import add_event, create_key, job_by_id

from ._server import demo_rows

#: (ours, the SDK's, the fields only ours has)
PAIRS: list[tuple[type[BaseModel], type[BaseModel], set[str]]] = [
    (schemas.FineTuningJob, FineTuningJob, {"user_provided_suffix", "hdpo_tune"}),
    (schemas.FineTuningJobEvent, FineTuningJobEvent, set()),
    (schemas.FineTuningJobCheckpoint, FineTuningJobCheckpoint, set()),
    (schemas.CheckpointMetrics, FineTuningJobCheckpoint.model_fields["metrics"].annotation, set()),  # type: ignore[list-item]  # the SDK's nested Metrics class, typed as its annotation
    (schemas.FileObject, FileObject, set()),
    (schemas.FileDeleted, FileDeleted, set()),
    (schemas.JobError, FineTuningJob.model_fields["error"].annotation.__args__[0], set()),  # type: ignore[union-attr]  # Optional[Error]: its first argument
]
PAGE_FIELDS = {"object", "first_id", "last_id"}  # what our pages add to SyncCursorPage's data/has_more


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("schemas") / "data"
    app = create_app(ServeConfig(data_dir=data, model_roots=(model_root,), allow_hub=False, workers=0))
    with app.state.ctx.sessions() as db:
        _row, key = create_key(db, "sdk")
    with TestClient(app, base_url="http://testserver", headers={"Authorization": f"Bearer {key}"}) as client:
        up = client.post("/v1/files", files={"file": ("p.jsonl", demo_rows(8))}, data={"purpose": "fine-tune"})
        method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 2, "n_epochs": 2}}}
        made = [client.post("/v1/fine_tuning/jobs", json={
            "model": "demo", "training_file": up.json()["id"], "seed": 3, "suffix": f"s{i}", "metadata": {"i": str(i)},
            "method": method}).json()["id"] for i in range(4)]
        client.post(f"/v1/fine_tuning/jobs/{made[3]}/cancel")
        _finish(app, data, made)
        yield {"client": client, "file": up.json()["id"], "jobs": made}


def _finish(app: Any, data: Path, ids: list[str]) -> None:
    """Job states as the scheduler writes them: running (a metrics event), succeeded (a checkpoint), failed."""
    with app.state.ctx.sessions() as db:
        running, done, failed = (job_by_id(db, i) for i in ids[:3])
        assert isinstance(running, JobRow) and isinstance(done, JobRow) and isinstance(failed, JobRow)
        running.status, running.last_stage, running.last_metrics_step, running.started_at = "running", "train:running", 1, 5
        add_event(db, running.id, "Step 1/2: training loss=0.6931", type_="metrics",
                  data={"step": 1, "total_steps": 2, "train_loss": 0.6931, "rewards/accuracies": 0.5, "alpha": 0.9})
        done.status, done.fine_tuned_model, done.trained_tokens, done.result_files = "succeeded", "ft:demo:x", 99, ["f"]
        failed.status, failed.error = "failed", {"code": "job_failed", "message": "exit 1", "param": None}
        db.commit()
    ckpt = data / "runs" / ids[1] / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (data / "runs" / ids[1] / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.5}) + "\n")


def test_every_field_the_sdk_declares_is_declared_here() -> None:
    for ours, sdk, extensions in PAIRS:
        assert set(sdk.model_fields) <= set(ours.model_fields), (ours.__name__, set(sdk.model_fields) - set(ours.model_fields))
        assert set(ours.model_fields) - set(sdk.model_fields) == extensions, ours.__name__


def _page(body: dict[str, Any], item: type[BaseModel]) -> list[dict[str, Any]]:
    """Check a list page against the SDK's cursor page and return its items."""
    SyncCursorPage[item].model_validate(body)  # type: ignore[valid-type]  # the SDK's generic page of that item
    assert set(body) == {"data", "has_more"} | PAGE_FIELDS
    return list(body["data"])


def test_real_responses_validate_with_the_sdks_models(api: dict[str, Any]) -> None:
    client, jobs = api["client"], api["jobs"]
    listed = _page(client.get("/v1/fine_tuning/jobs").json(), FineTuningJob)
    assert {j["status"] for j in listed} == {"running", "succeeded", "failed", "cancelled"}
    for body in [*listed, *(client.get(f"/v1/fine_tuning/jobs/{i}").json() for i in jobs)]:
        sdk = FineTuningJob.model_validate(body)
        assert sdk.model_dump(mode="json", exclude_unset=True).keys() <= body.keys()
        assert set(body) == set(schemas.FineTuningJob.model_fields)
    failed = FineTuningJob.model_validate(client.get(f"/v1/fine_tuning/jobs/{jobs[2]}").json())
    assert failed.error is not None and failed.error.code == "job_failed"
    assert failed.method is not None and failed.method.dpo is not None
    assert failed.method.dpo.hyperparameters is not None and failed.method.dpo.hyperparameters.beta == 0.2
    events = _page(client.get(f"/v1/fine_tuning/jobs/{jobs[0]}/events").json(), FineTuningJobEvent)
    metrics = [FineTuningJobEvent.model_validate(e) for e in events if e["type"] == "metrics"]
    assert metrics and metrics[0].data == {"step": 1, "total_steps": 2, "train_loss": 0.6931,
                                           "rewards/accuracies": 0.5, "alpha": 0.9}
    ckpts = _page(client.get(f"/v1/fine_tuning/jobs/{jobs[1]}/checkpoints").json(), FineTuningJobCheckpoint)
    assert FineTuningJobCheckpoint.model_validate(ckpts[0]).metrics.train_loss == 0.5
    files = _page(client.get("/v1/files").json(), FileObject)
    assert FileObject.model_validate(files[0]).purpose == "fine-tune"
    FileObject.model_validate(client.get(f"/v1/files/{api['file']}").json())


def test_responses_are_rendered_as_before(api: dict[str, Any]) -> None:
    """json.dumps' bytes (what the routes' hand-built dicts were sent as), never pydantic's own JSON writer."""
    client = api["client"]
    for path in ("/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{api['jobs'][1]}", "/v1/files"):
        r = client.get(path)
        assert r.content == json.dumps(r.json(), ensure_ascii=False, separators=(",", ":")).encode()
    lr = client.get(f"/v1/fine_tuning/jobs/{api['jobs'][1]}").json()["method"]["hdpo_tune"]["learning_rate"]
    assert f'"learning_rate":{json.dumps(lr)}' in client.get(f"/v1/fine_tuning/jobs/{api['jobs'][1]}").text


def test_openapi_documents_every_json_route(api: dict[str, Any]) -> None:
    doc = api["client"].get("/openapi.json").json()
    untyped = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            content = op["responses"].get("200", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            streams = path.endswith(("/content", "/artifacts"))  # file and tar downloads
            if not streams and (not schema or schema == {}):
                untyped.append(f"{method.upper()} {path}")
    assert untyped == []
    job = doc["components"]["schemas"]["FineTuningJob"]
    assert set(FineTuningJob.model_fields) <= set(job["properties"])
    created = doc["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]
    assert created["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/FineTuningJob"}
    assert created["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
