"""The service through the official `openai` SDK, unmodified, against a live server on 127.0.0.1.

One server for the module; three jobs are submitted at once (one worker on CPU): the first trains to
`succeeded`, the second is cancelled while it trains, the third while it is still queued.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml

from ._server import FAKE_HF_TOKEN, REPO, TINY, demo_rows, wait_for

DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 1.0, "batch_size": 2, "learning_rate_multiplier": 30}}}


@pytest.fixture(scope="module")
def training_file(live):
    server, alice, _ = live
    return server.client(alice).files.create(file=("prefs.jsonl", demo_rows(16)), purpose="fine-tune")


@pytest.fixture(scope="module")
def jobs(live, training_file):
    """(to succeed, to cancel while running, to cancel while queued), created back to back."""
    server, alice, _ = live
    c = server.client(alice)
    # the job to cancel while it trains has many steps, so the cancel always lands mid-training
    long = {**TINY, "train": {**TINY["train"], "max_steps": 50}}
    tasks = c.files.create(file=("tasks.jsonl", (REPO / "examples/demo/data/tasks_eval.jsonl").read_bytes()
                                 .splitlines(keepends=True)[0] * 2), purpose="user_data")
    evaluated = {**TINY, "eval": {"tasks": tasks.id, "n_samples": 1, "temperatures": [1.0], "max_new_tokens": 8,
                                  "compare_reference": False}}  # so eval/ is among the downloaded artifacts
    made = [c.fine_tuning.jobs.create(model="demo", training_file=training_file.id, method=DPO, seed=7,
                                      suffix=f"t{i}", metadata={"case": str(i)},
                                      extra_body={"hdpo_tune": (evaluated, long, TINY)[i]})
            for i in range(3)]
    return made


def test_files_roundtrip(live, training_file):
    server, alice, _ = live
    c = server.client(alice)
    assert training_file.status == "processed" and training_file.purpose == "fine-tune"
    assert training_file.bytes == len(demo_rows(16))
    assert c.files.retrieve(training_file.id).filename == "prefs.jsonl"
    assert c.files.content(training_file.id).read() == demo_rows(16)
    extra = c.files.create(file=("more.jsonl", demo_rows(3)), purpose="fine-tune")
    listed = [f.id for f in c.files.list()]
    assert listed[:2] == [extra.id, training_file.id]  # newest first
    page = c.files.list(limit=1)
    assert [f.id for f in page.data] == [extra.id] and page.has_more
    assert c.files.delete(extra.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(extra.id)


def test_openai_dpo_format_is_accepted(live):
    server, alice, _ = live
    row = {"input": {"messages": [{"role": "user", "content": "Tom has 2 apples. He buys 3. How many?"}]},
           "preferred_output": [{"role": "assistant", "content": "2 + 3 = 5.\n#### 5"}],
           "non_preferred_output": [{"role": "assistant", "content": "2 + 3 = 6.\n#### 6"}]}
    f = server.client(alice).files.create(file=("oa.jsonl", (json.dumps(row) + "\n").encode()), purpose="fine-tune")
    assert f.status == "processed"
    converted = server.data / "files" / f"{f.id}.trl.jsonl"
    assert json.loads(converted.read_text())["chosen"] == row["preferred_output"]


def test_user_data_is_for_eval_tasks_only(live, training_file):
    server, alice, _ = live
    c = server.client(alice)
    tasks = c.files.create(file=("tasks.jsonl", b'{"prompt": "1+1=", "answer": "2"}\n'), purpose="user_data")
    assert tasks.purpose == "user_data" and tasks.status == "processed"
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(model="demo", training_file=tasks.id)
    assert err.value.body["code"] == "invalid_file_purpose"
    with pytest.raises(openai.BadRequestError) as err:  # accepted as eval.tasks: the spec check runs next
        c.fine_tuning.jobs.create(model="demo", training_file=training_file.id,
                                  extra_body={"hdpo_tune": {"eval": {"tasks": tasks.id, "n_samples": 0}}})
    assert err.value.body["code"] == "invalid_spec" and err.value.body["message"].startswith("eval.n_samples")


@pytest.mark.parametrize(("content", "name", "line", "says"), [
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "x", "chosen": "y"}\n', "bad.jsonl", 2,
     "missing field 'rejected'"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n', "bad.jsonl", 2, "invalid JSON"),
    (b'{"prompt": "a", "chosen": "same", "rejected": "same"}\n', "bad.jsonl", 1, "identical"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "bad.csv", None, "must be JSONL"),
])
def test_bad_file_is_a_400_naming_the_row(live, content, name, line, says):
    server, alice, _ = live
    with pytest.raises(openai.BadRequestError) as err:
        server.client(alice).files.create(file=(name, content), purpose="fine-tune")
    body = err.value.body
    assert err.value.status_code == 400 and body["type"] == "invalid_request_error" and body["param"] == "file"
    assert says in body["message"] and body.get("line") == line
    if line:
        assert body["message"].startswith(f"{name}:{line}:")
    assert str(server.data) not in body["message"]  # no server path in a response


def test_upload_limit_and_purpose(live):
    server, alice, _ = live
    c = server.client(alice)
    with pytest.raises(openai.APIStatusError) as err:
        c.files.create(file=("big.jsonl", demo_rows(2) * 4000), purpose="fine-tune")  # ~1.9 MB > 1 MiB
    assert err.value.status_code == 413 and err.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(file=("x.jsonl", demo_rows(2)), purpose="batch")
    assert err.value.body["param"] == "purpose"


def test_cancel_queued(live, jobs):
    server, alice, _ = live
    c = server.client(alice)
    queued = jobs[2]
    assert c.fine_tuning.jobs.retrieve(queued.id).status == "queued"  # one worker: jobs[0] runs first
    assert c.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(queued.id)


def test_alpha_auto_through_extra_body(live, jobs, training_file):
    server, alice, _ = live
    c = server.client(alice)
    job = c.fine_tuning.jobs.create(model="demo", training_file=training_file.id, extra_body={
        "hdpo_tune": {"hdpo": {"alpha": "auto", "target_entropy": "0.8x"}, "lora": None}})
    spec = yaml.safe_load((server.data / "runs" / job.id / "job.yaml").read_text())
    assert spec["hdpo"] == {"alpha": "auto", "target_entropy": "0.8x"} and spec["lora"] is None
    assert job.method.hdpo_tune["alpha"] == "auto" and job.method.hdpo_tune["lora"] is False
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # still queued behind jobs[0]


def test_job_succeeds(live, jobs):
    server, alice, _ = live
    c = server.client(alice)
    job = wait_for(c, jobs[0].id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:demo:hdpo-tune:t0:{job.id[6:14]}" and job.seed == 7
    assert job.metadata == {"case": "0"} and job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 1.0 and job.hyperparameters.batch_size == 2
    run = server.data / "runs" / job.id
    resolved = yaml.safe_load((run / "job.resolved.yaml").read_text())
    assert resolved["hdpo"]["alpha"] == 0.8 and resolved["train"]["max_steps"] == 4  # the hdpo_tune extension
    assert resolved["train"]["learning_rate"] == pytest.approx(3e-5)  # 30 x the spec's default 1e-6
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert job.trained_tokens == sum(m["tokens"] for m in metrics) > 0

    events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e for e in events if e.type == "metrics"]
    assert sorted(e.data["step"] for e in steps) == [1, 2, 3, 4]
    last = max(steps, key=lambda e: e.data["step"]).data
    assert last["total_steps"] == 4 and last["train_loss"] == pytest.approx(metrics[-1]["loss"], rel=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "entropy", "tokens_per_s"):
        assert key in last
    messages = [e.message for e in events]
    assert "Stage train: done" in messages and "Stage merge: done" in messages
    assert messages[0] == "The job has successfully completed"  # newest first
    paged = c.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(paged.data) == 3 and paged.has_more
    assert paged.data[-1].id != c.fine_tuning.jobs.list_events(job.id, limit=3, after=paged.data[-1].id).data[0].id

    ckpts = list(c.fine_tuning.jobs.checkpoints.list(job.id))
    assert [k.step_number for k in ckpts] == [4, 3]  # keep_checkpoints: 2, newest first
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
    assert ckpts[0].metrics.train_loss == pytest.approx(metrics[-1]["loss"], rel=1e-6)

    (result,) = job.result_files
    rows = list(csv.DictReader(io.StringIO(c.files.content(result).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]

    req = urllib.request.Request(f"{server.url}/hdpo/jobs/{job.id}/artifacts?parts=merged,final",
                                 headers={"Authorization": f"Bearer {alice}"})
    with urllib.request.urlopen(req, timeout=60) as resp, tarfile.open(fileobj=resp, mode="r|") as tar:
        names = [m.name for m in tar]
    assert f"{job.id}/merged/model.safetensors" in names and f"{job.id}/final/adapter_config.json" in names


#: written by peft, and read back by the pipeline to load an adapter's base: they keep the base model's folder
def test_downloaded_artifacts_hold_no_server_path(live, jobs, model_root):
    """Every file of a served job's artifacts (model cards, provenance.json, merge.json, results.json,
    summary.md, peft's adapter_config.json and README.md...) is free of the data folder's and the model root's
    paths, and each downloaded folder still verifies against its manifest."""
    server, alice, _ = live
    job = wait_for(server.client(alice), jobs[0].id)
    req = urllib.request.Request(f"{server.url}/hdpo/jobs/{job.id}/artifacts",
                                 headers={"Authorization": f"Bearer {alice}"})
    seen = {}
    with urllib.request.urlopen(req, timeout=60) as resp, tarfile.open(fileobj=resp, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                seen[member.name.split("/", 1)[1]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert {"merged/README.md", "merged/provenance.json", "merged/merge.json", "eval/results.json",
            "eval/summary.md"} <= set(seen)
    data_paths = {str(server.data), str(Path(server.data).resolve())}
    root_paths = {str(model_root), str(Path(model_root).resolve()), str(REPO)}
    for name, blob in seen.items():
        assert not any(p.encode() in blob for p in data_paths | root_paths), name
    assert json.loads(seen["final/adapter_config.json"])["base_model_name_or_path"] == "demo"
    for part in ("final", "merged", "eval"):
        listed = json.loads(seen[f"{part}/checksums.json"])["files"]
        got = {n.split("/", 1)[1]: b for n, b in seen.items() if n.startswith(f"{part}/") and
               not n.endswith("/checksums.json")}
        assert {n: (len(b), hashlib.sha256(b).hexdigest()) for n, b in got.items()} == {
            n: (m["size"], m["sha256"]) for n, m in listed.items()}, part
    assert json.loads(seen["eval/results.json"])["target"] == "final"
    assert json.loads(seen["merged/merge.json"])["base_model"] == "demo"
    summary = server.data / "runs" / job.id / "eval" / "summary.md"
    before = summary.read_bytes()
    summary.write_bytes(before + b"changed on the server")  # a damaged folder is refused, never sent
    try:
        damaged = urllib.request.Request(f"{server.url}/hdpo/jobs/{job.id}/artifacts?parts=eval",
                                         headers={"Authorization": f"Bearer {alice}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(damaged, timeout=60)
        assert err.value.code == 409 and b"eval/ of" in err.value.read()
    finally:
        summary.write_bytes(before)
    events = list(server.client(alice).fine_tuning.jobs.list_events(job.id, limit=100))
    assert not any(p in e.message for e in events for p in data_paths | root_paths)


def test_fine_tuned_model_is_a_model_for_the_next_job(live, jobs, training_file):
    server, alice, _ = live
    c = server.client(alice)
    done = wait_for(c, jobs[0].id)
    nxt = c.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=training_file.id,
                                    extra_body={"hdpo_tune": TINY})
    resolved = (server.data / "runs" / nxt.id / "job.yaml").read_text()
    assert f"{done.id}/merged" in resolved
    c.fine_tuning.jobs.cancel(nxt.id)


def test_cancel_running(live, jobs):
    server, alice, _ = live
    c = server.client(alice)
    job = wait_for(c, jobs[1].id, until=lambda j: j.status == "running" and j.hdpo_tune["step"] >= 1)
    c.fine_tuning.jobs.cancel(job.id)
    job = wait_for(c, job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    status = json.loads((server.data / "runs" / job.id / "status.json").read_text())
    assert status["state"] == "interrupted"  # SIGTERM: the pipeline wrote a checkpoint and stopped
    assert [k.step_number for k in c.fine_tuning.jobs.checkpoints.list(job.id)]


def test_jobs_list_pages(live, jobs):
    server, alice, _ = live
    c = server.client(alice)
    ids = [j.id for j in c.fine_tuning.jobs.list()]  # the SDK's auto-pager follows `after`
    assert {j.id for j in jobs} <= set(ids)
    first = c.fine_tuning.jobs.list(limit=2)
    second = c.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in first.data + second.data] == ids[:4]


def test_auth_and_isolation(live, jobs, training_file):
    server, alice, bob = live
    with pytest.raises(openai.AuthenticationError) as err:
        server.client("hdpo-sk-wrong").fine_tuning.jobs.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    assert "hdpo-sk-wrong" not in json.dumps(err.value.body)
    b = server.client(bob)
    for call in (lambda: b.fine_tuning.jobs.retrieve(jobs[0].id), lambda: b.fine_tuning.jobs.cancel(jobs[0].id),
                 lambda: b.fine_tuning.jobs.list_events(jobs[0].id), lambda: b.files.retrieve(training_file.id),
                 lambda: b.files.content(training_file.id), lambda: b.files.delete(training_file.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(b.fine_tuning.jobs.list()) == [] and list(b.files.list()) == []
    with pytest.raises(openai.BadRequestError) as err:  # another key's file is not a training file either
        b.fine_tuning.jobs.create(model="demo", training_file=training_file.id)
    assert err.value.body["code"] == "file_not_found"


def test_bad_requests(live, training_file):
    server, alice, _ = live
    c = server.client(alice)
    cases = [
        ({"model": "../../etc", "training_file": training_file.id}, "model_not_found"),
        ({"model": "demo", "training_file": training_file.id, "method": {"type": "supervised"}}, "unsupported_method"),
        ({"model": "demo", "training_file": training_file.id,
              "method": {"type": "dpo", "dpo": {"hyperparameters": {"alpha": 0.5}}}}, "invalid_hyperparameters"),
        ({"model": "demo", "training_file": training_file.id, "extra_body": {"hdpo_tune": {"hub": {"repo_id": "a/b"}}}},
         "forbidden_field"),
        ({"model": "demo", "training_file": training_file.id,
              "extra_body": {"hdpo_tune": {"hdpo": {"alpha": "auto"}}}}, "invalid_spec"),  # needs target_entropy
    ]
    for kwargs, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            c.fine_tuning.jobs.create(**kwargs)
        assert err.value.body["code"] == code, err.value.body
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(model="demo", training_file=training_file.id,
                                  extra_body={"hdpo_tune": {"hdpo": {"alpha": "auto"}}})
    assert "hdpo.target_entropy: required with hdpo.alpha: auto" in err.value.body["message"]


def test_no_secret_anywhere(live, jobs):
    """Neither the API keys nor HF_TOKEN (set in the server's environment) are in any file or log."""
    server, alice, bob = live
    wait_for(server.client(alice), jobs[1].id)
    blobs = [p.read_bytes() for p in Path(server.data).rglob("*") if p.is_file()] + [server.log.read_bytes()]
    for secret in (alice, bob, FAKE_HF_TOKEN):
        assert not any(secret.encode() in b for b in blobs)


def _native(server, key, spec):  # type: ignore[no-untyped-def]
    return server.client(key).post("/hdpo/jobs", body={"spec": spec}, cast_to=dict)


@pytest.mark.parametrize(("patch", "code", "says"), [
    ({"data": {"train": "/etc/passwd"}}, "invalid_path", "data.train: '/etc/passwd' is not a file id of yours"),
    ({"data": {"train": "../../files/x.jsonl"}}, "invalid_path", "data.train"),
    ({"model": {"name_or_path": "/tmp"}}, "model_not_found", "model.name_or_path: model '/tmp' is not available"),
    ({"model": {"name_or_path": "demo", "trust_remote_code": True}}, "forbidden_field", "model.trust_remote_code"),
    ({"output": {"dir": "/tmp/x"}}, "forbidden_field", "output: not allowed"),
    ({"train": {"ref_cache_dir": "/tmp/c", "precompute_ref_logps": True}}, "forbidden_field", "train.ref_cache_dir"),
    ({"eval": {"tasks": "/etc/hosts"}}, "invalid_path", "eval.tasks"),
    ({"distributed": {"accelerate_config": "/etc/x.yaml"}}, "forbidden_field", "distributed.accelerate_config"),
    ({"eval": {"lm_eval": {"tasks": ["t"], "include_path": "/tmp"}}}, "forbidden_field", "eval.lm_eval: not allowed"),
])
def test_native_spec_cannot_leave_the_data_folder(live, training_file, patch, code, says):
    server, alice, _ = live
    spec = {"model": {"name_or_path": "demo"}, "data": {"train": training_file.id}}
    for section, value in patch.items():
        spec[section] = {**spec.get(section, {}), **value}
    with pytest.raises(openai.BadRequestError) as err:
        _native(server, alice, spec)
    assert err.value.body["code"] == code and says in err.value.body["message"], err.value.body


def test_native_spec_messages_are_the_clis(live, training_file, tmp_path):
    """A bad spec gets exactly the lines `hdpo-tune run` prints for it."""
    from hdpo_core.errors import InputError
    from service.spec.job import load_spec

    server, alice, _ = live
    bad = {"model": {"name_or_path": "demo"}, "data": {"train": training_file.id},
           "train": {"batch_size": 6, "micro_batch_size": 4, "max_stpes": 3}}
    with pytest.raises(openai.BadRequestError) as err:
        _native(server, alice, bad)
    local = tmp_path / "job.yaml"
    local.write_text(json.dumps({**bad, "output": {"dir": "."}}))
    with pytest.raises(InputError) as cli:
        load_spec(local)
    assert err.value.body["code"] == "invalid_spec" and err.value.body["message"] == cli.value.message
    assert "did you mean 'max_steps'" in cli.value.message


def test_path_fields_are_every_path_the_spec_resolves():
    """PATH_FIELDS must list every field load_spec treats as a path: a new one must be policed too."""
    from service.serve.jobspec import PATH_FIELDS
    from service.spec.paths import resolve_paths as _resolve_paths

    sections = {s for s, _, _ in PATH_FIELDS} | {"eval", "train", "distributed", "model", "data", "output"}
    probe = {s: {k: "./probe" for s2, k, _ in PATH_FIELDS if s2 == s} for s in sections}
    from service.spec.job import JobSpec
    from service.spec.messages import model_of

    for name, info in JobSpec.model_fields.items():  # every str field of every section, not only the known ones
        model = model_of(info.annotation)
        if hasattr(model, "model_fields"):
            probe.setdefault(name, {}).update({k: probe.get(name, {}).get(k, "./probe")
                                               for k in model.model_fields})
    resolved = _resolve_paths(probe, Path("/base"))
    changed = {(s, k) for s, sec in resolved.items() for k, v in sec.items() if v != "./probe"}
    assert changed == {(s, k) for s, k, _ in PATH_FIELDS}
