"""deploy/k8s (and the RWX PVCs in deploy/kubeflow): strict schema validation of every core object with
kubernetes-validate's bundled (offline) schemas, and the cross-references between the files."""

from __future__ import annotations

import copy
import json

import pytest

from ._util import DEPLOY, REPO, yaml_docs

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

K8S_VERSION = "1.35.0"
FILES = sorted((DEPLOY / "k8s").glob("*.yaml")) + [DEPLOY / "kubeflow" / "pvc.yaml"]


def objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for f in FILES for d in yaml_docs(f)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_validates_strictly(path):
    docs = yaml_docs(path)
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster"):
            continue  # a custom resource: KubeRay's CRD schema checks it (test_kuberay.py)
        kv.validate(doc, K8S_VERSION, strict=True)


def test_the_expected_objects_exist():
    assert set(objects()) >= {("Job", "hdpo-tune"), ("Secret", "hdpo-hf-token"), ("ConfigMap", "hdpo-job-spec"),
                              ("PersistentVolumeClaim", "hdpo-runs"), ("PersistentVolumeClaim", "hdpo-hf-cache"),
                              ("PersistentVolumeClaim", "hdpo-runs-rwx"),
                              ("PersistentVolumeClaim", "hdpo-hf-cache-rwx")}


@pytest.mark.parametrize("mutate", [
    lambda j: j["spec"]["template"]["spec"]["containers"][0].update(resource={}),  # unknown field
    lambda j: j["spec"].update(backoffLimit="one"),
    lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("name"),
    lambda j: j["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"].pop("claimName"),
])
def test_a_broken_job_fails(mutate):
    job = copy.deepcopy(objects()[("Job", "hdpo-tune")])
    mutate(job)
    with pytest.raises(kv.ValidationError):
        kv.validate(job, K8S_VERSION, strict=True)


def test_job_wiring():
    objs = objects()
    pod = objs[("Job", "hdpo-tune")]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 1000
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "command" not in c  # the image's ENTRYPOINT (hdpo-tune) runs; args is the bare job path
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes)
    # HF_TOKEN only from the Secret, by its name and key.
    (token,) = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    secret = objs[("Secret", ref["name"])]
    assert ref["key"] in secret["stringData"] and secret["stringData"][ref["key"]] == ""  # no token committed
    # PVCs: run folder and HF cache exist and sit where the image and the spec expect them.
    claims = {volumes[n]["persistentVolumeClaim"]["claimName"]: p for p, n in mounts.items()
              if "persistentVolumeClaim" in volumes[n]}
    assert all(("PersistentVolumeClaim", claim) in objs for claim in claims)
    assert claims["hdpo-hf-cache"] == "/cache/huggingface"
    assert claims["hdpo-runs"] == "/runs"
    # The job spec comes from the ConfigMap at the path in args.
    (spec_path,) = c["args"]
    mount = next(p for p, n in mounts.items() if "configMap" in volumes[n])
    cm = objs[("ConfigMap", volumes[mounts[mount]]["configMap"]["name"])]
    assert spec_path.startswith(mount + "/") and spec_path.rsplit("/", 1)[1] in cm["data"]


def test_uid_and_cache_match_the_dockerfile():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "USER 1000:1000" in text and "HF_HOME=/cache/huggingface" in text
    assert json.loads(text.split("VOLUME ", 1)[1].splitlines()[0]) == ["/cache/huggingface"]


def test_configmap_job_spec_is_a_valid_job(tmp_path):
    spec_mod = pytest.importorskip("service.spec.job")
    cm = objects()[("ConfigMap", "hdpo-job-spec")]
    job = tmp_path / "job.yaml"
    job.write_text(cm["data"]["job.yaml"], encoding="utf-8")
    spec = spec_mod.load_spec(job)
    assert spec.output.dir.startswith("/runs/")  # on the run-folder PVC, not the pod's disk
