"""`tracking:` end to end with the real libraries: one `hdpo-tune run` (train + eval) logs to MLflow (a local
SQLite store, read back with MLflow's own client), Weights & Biases (offline mode, its transaction file read
with W&B's own protobuf schema) and trackio (local, read back with trackio's API). Each must hold exactly
metrics.jsonl's numbers under metrics.jsonl's names, the resolved spec as parameters, the eval stage's
headline at the end, and no secret."""

from __future__ import annotations

import json
import os
import random
import string
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hdpo_core.errors import InputError
from service.spec.job import load_spec
from service.stages.tracking import (
    Trackers,
    flatten_numbers,
    metric_values,
    open_trackers,
    redact,
    spec_params,
)
from service.validate.job import validate_job

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"
PROJECT = "hdpo-test"


def _secret(prefix: str) -> str:
    rng = random.Random()
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(34))


def _job(tmp: Path, model: Path, pairs: Path, tracking: dict[str, Any]) -> Path:
    tasks = tmp / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                             for i in range(3)))
    spec = {"model": {"name_or_path": str(model)}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": str(pairs), "eval": str(pairs), "max_length": 64},
            "hdpo": {"alpha": 0.9, "beta": 0.1},
            "train": {"max_steps": 3, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 1e-3, "seed": 0,
                      "save_every": 100, "eval_every": 2},
            "eval": {"tasks": str(tasks), "n_samples": 2, "max_new_tokens": 4, "temperatures": [1.0],
                     "compare_reference": False},
            "output": {"dir": str(tmp / "run")}, "tracking": tracking}
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


# --- reading each tracker's store with its own library -------------------------------------------------------

def _mlflow_run(uri: str) -> tuple[Any, dict[str, list[tuple[int, float]]]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(PROJECT)
    (run,) = client.search_runs([exp.experiment_id])
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
               for k in run.data.metrics}
    return run, history


def _wandb_records(run_dir: Path) -> list[Any]:
    """Every record of the offline runs' transaction logs (LevelDB log framing: 32 KiB blocks, 7-byte headers
    ``crc32, length, type``), decoded with W&B's own ``Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, buf = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # full record, last piece of one
                record = pb.Record()
                record.ParseFromString(buf + chunk if kind == 4 else chunk)
                records.append(record)
            buf = chunk if kind == 2 else buf + chunk if kind == 3 else b""
    return records


def _trackio_run(env: dict[str, str]) -> dict[str, Any]:
    """trackio's API in a fresh interpreter (it reads TRACKIO_DIR at import)."""
    code = ("import json, trackio\nfrom trackio.sqlite_storage import SQLiteStorage\n"
            f"runs = list(trackio.Api().runs({PROJECT!r}))\n"
            f"print(json.dumps([{{'name': r.name, 'config': r.config, 'logs': SQLiteStorage.get_logs({PROJECT!r}, "
            "r.name)} for r in runs], default=str))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = json.loads(out.stdout.strip().splitlines()[-1])
    return run


def test_run_logs_to_mlflow_wandb_and_trackio(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, tiny_model_dir, tiny_pairs, {"report_to": ["mlflow", "wandb", "trackio"], "project": PROJECT,
                                                      "mlflow_tracking_uri": uri, "wandb_mode": "offline"})
    hf_token, wandb_key = _secret("hf_"), _secret("")
    env = {**os.environ, "HF_TOKEN": hf_token, "WANDB_API_KEY": wandb_key, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TRACKIO_DIR": str(tmp_path / "trackio"),
           **{f"WANDB_{d}_DIR": str(tmp_path / "wandb_home") for d in ("CONFIG", "CACHE", "DATA")}}
    proc = subprocess.run([str(HDPO_TUNE), "run", str(job)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run folder: " in proc.stdout and "rackio" not in proc.stdout  # trackers' banners go to stderr
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {(r["step"], k): v for r in records for k, v in metric_values(r).items()}
    assert [r["step"] for r in records] == [1, 2, 3] and ("eval/loss", ) and (2, "eval/loss") in expected
    results = json.loads((run / "eval" / "results.json").read_text())
    final = flatten_numbers(results["headline"], "final_eval")
    assert "final_eval/accuracy/policy/1" in final and "final_eval/entropy_chosen/policy" in final

    # MLflow: one run holding the train metrics, the spec and, from the eval stage, the final numbers
    mrun, history = _mlflow_run(uri)
    assert {(s, k): v for k, h in history.items() for s, v in h if not k.startswith("final_eval/")} == \
        pytest.approx(expected, rel=1e-12)
    assert {k: h for k, h in history.items() if k.startswith("final_eval/")} == \
        {k: [(3, pytest.approx(v, rel=1e-12))] for k, v in final.items()}
    params = mrun.data.params
    assert params["hdpo.alpha"] == "0.9" and params["model.name_or_path"] == str(tiny_model_dir)
    assert params["tracking.mlflow_tracking_uri"] == uri and mrun.info.run_name == "run"

    # W&B offline: the same numbers per step, the spec as config, the final numbers at step 3
    recs = _wandb_records(run)
    wb: dict[tuple[int, str], float] = {}
    for r in (r for r in recs if r.WhichOneof("record_type") == "history"):
        row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        wb.update({(row["_step"], k): v for k, v in row.items() if not k.startswith("_")})
    assert {k: v for k, v in wb.items() if not k[1].startswith("final_eval/")} == pytest.approx(expected, rel=1e-12)
    assert {k: v for k, v in wb.items() if k[1].startswith("final_eval/")} == \
        pytest.approx({(3, k): v for k, v in final.items()}, rel=1e-12)
    first = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in first.config.update}
    assert config["hdpo.alpha"] == 0.9 and config["model.name_or_path"] == str(tiny_model_dir)
    assert len({p.name.rsplit("-", 1)[1] for p in run.glob("wandb/offline-run-*")}) == 1  # one run id

    # trackio: the run, its config and every logged step
    trun = _trackio_run(env)
    assert trun["name"].startswith("run-") and trun["config"]["hdpo.alpha"] == 0.9
    tk = {(log["step"], k): v for log in trun["logs"] for k, v in log.items() if k not in ("step", "timestamp")}
    assert {k: v for k, v in tk.items() if not k[1].startswith("final_eval/")} == pytest.approx(expected, rel=1e-12)
    assert {k: v for k, v in tk.items() if k[1].startswith("final_eval/")} == \
        pytest.approx({(3, k): v for k, v in final.items()}, rel=1e-12)

    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes()
                                                                      for s in (hf_token, wandb_key))]
    assert leaked == [] and hf_token not in proc.stderr + proc.stdout and wandb_key not in proc.stderr


def test_a_tracker_that_cannot_start_is_one_line_with_the_fix(tmp_path: Path) -> None:
    """W&B online without an API key: the real library refuses and the stage gets one line naming the fix (the
    CLI prints it as ``error: ...`` with exit code 1, before training). In a fresh interpreter with a clean
    home, so no login of the machine can leak in."""
    job = _spec(tmp_path, {"report_to": ["wandb"]})
    (tmp_path / "run").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"),
               **{f"WANDB_{d}_DIR": str(tmp_path / "wandb_home") for d in ("CONFIG", "CACHE", "DATA")})
    code = ("import sys\nfrom pathlib import Path\nfrom hdpo_core.errors import RunError\n"
            "from service.spec.job import load_spec\nfrom service.stages.tracking import open_trackers\n"
            "try:\n    open_trackers(load_spec(sys.argv[1]), Path(sys.argv[2]))\n"
            "except RunError as exc:\n    print('RunError:', exc.message)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(job), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines() == [
        "RunError: tracking.report_to: cannot start wandb (UsageError: No API key configured. Use `wandb login` to "
        "log in.); set WANDB_API_KEY (or run `wandb login`), or set tracking.wandb_mode: offline, or remove the "
        "tracking section"], proc.stdout + proc.stderr[-2000:]
    assert not (tmp_path / "run" / "tracking.json").exists()


# --- the pieces, fast ---------------------------------------------------------------------------------------

def _spec(tmp_path: Path, tracking: dict[str, Any]) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"model": {"name_or_path": "gpt2"}, "data": {"train": "org/data"},
                                   "output": {"dir": "./run"}, "tracking": tracking}))
    return job


@pytest.mark.parametrize("tracking, message", [
    ({"report_to": ["mlflow", "mlflow"]}, "tracking.report_to: lists a tracker twice"),
    ({"report_to": ["tensorboard"]}, "tracking.report_to[0]: invalid choice (got 'tensorboard')"),
    ({"report_to": []}, "tracking.report_to: must not be empty"),
    ({"report_to": ["mlflow"], "mlflow_tracking_uri": "https://me:s3cretpass@mlflow.example.com"},
     "tracking.mlflow_tracking_uri: holds a password; set MLFLOW_TRACKING_USERNAME"),
    ({"report_to": ["wandb"], "api_key": "abc123456789"}, "tracking.api_key: secrets are not allowed"),
])
def test_bad_tracking_section_is_one_line_without_the_secret(tmp_path: Path, tracking: dict[str, Any],
                                                             message: str) -> None:
    with pytest.raises(InputError) as err:
        load_spec(_spec(tmp_path, tracking))
    assert message in err.value.message and "s3cretpass" not in err.value.message
    assert "abc123456789" not in err.value.message


def test_params_are_the_resolved_spec_with_secrets_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _secret("")
    monkeypatch.setenv("WANDB_API_KEY", key)
    spec = load_spec(_spec(tmp_path, {"report_to": ["mlflow"], "run_name": f"exp-{key}",
                                      "mlflow_tracking_uri": "https://alice@mlflow.example.com"}))
    params = spec_params(spec)
    assert params["tracking.run_name"] == "exp-***" and params["tracking.mlflow_tracking_uri"] == \
        "https://***@mlflow.example.com"
    assert params["hdpo.beta"] == spec.hdpo.beta and params["tracking.report_to"] == '["mlflow"]'
    assert params["data.train"] == "org/data" and params["lora"] == "null"
    assert redact(f"token hf_{'a' * 34} in https://u:p@host/x") == "token hf_*** in https://***@host/x"


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    job = _spec(tmp_path, {"report_to": ["mlflow", "wandb"]})
    line = "tracking.report_to: wandb is not installed; pip install 'hdpo-tune[tracking]' (or pip install wandb)"
    assert line in validate_job(job) and not any("mlflow" in p for p in validate_job(job))
    with pytest.raises(InputError) as err:
        open_trackers(load_spec(_spec(tmp_path, {"report_to": ["wandb"]})), tmp_path)
    assert err.value.message == line


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken:
        name = "broken"

        def log(self, values: dict[str, float], step: int | None) -> None:
            raise ConnectionError("server went away\nsecond line")

        def finish(self) -> None:
            pass

    class Kept(Broken):
        name = "kept"
        seen: list[tuple[dict[str, float], int | None]] = []

        def log(self, values: dict[str, float], step: int | None) -> None:
            self.seen.append((values, step))

    trackers = Trackers([Broken(), Kept()])
    trackers.log({"loss": 1.0}, 1)
    trackers.log({"loss": 0.5}, 2)
    err = capsys.readouterr().err
    assert err.count("warning: tracking: broken failed while logging step 1 (ConnectionError: server went "
                     "away)") == 1 and "second line" not in err
    assert Kept.seen == [({"loss": 1.0}, 1), ({"loss": 0.5}, 2)]


def test_the_quickstart_opts_in_with_its_one_documented_line(tmp_path: Path) -> None:
    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    text = quickstart.read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("# tracking:")]
    job = tmp_path / "quickstart.yaml"  # the spec only: load_spec does not open the (relative) model and data
    job.write_text(text + line.removeprefix("# ") + "\n")
    spec = load_spec(job)
    assert spec.tracking is not None and spec.tracking.report_to == ["mlflow"]
    readme = (quickstart.parents[1] / "README.md").read_text()
    assert f"`{line.removeprefix('# ')}`" in readme

