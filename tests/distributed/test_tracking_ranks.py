"""`tracking:` under a 2-process launch (gloo on CPU): only rank 0 logs, so the MLflow store holds one run whose
metric history is metrics.jsonl's, and no other rank writes into the test's folders."""

import json

import pytest
import yaml

from service.stages.tracking import metric_values
from tests.distributed.test_distributed import PY, Path, audited, launched, write_job

pytestmark = pytest.mark.e2e  # a 2-process launch: `make test-e2e`


def test_two_processes_log_one_tracker_run_from_rank_zero(tmp_path, tiny_model_dir, tiny_pairs):
    from mlflow import MlflowClient

    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, lora=True, steps=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = yaml.safe_load(job.read_text())
    job.write_text(yaml.safe_dump({**spec, "tracking": {"report_to": ["mlflow"], "project": "ddp",
                                                        "mlflow_tracking_uri": uri}}))
    out = launched([str(Path(PY).parent / "hdpo-tune"), "launch", str(job), "--cpu", "--num-processes", "2"],
                   timeout=600)
    assert audited(out, tmp_path) == [], audited(out, tmp_path)[:10]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    for name in ("loss", "rewards/accuracies", "entropy"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == [(r["step"], metric_values(r)[name]) for r in records]
    assert run.data.params["hdpo.alpha"] == "0.9"
