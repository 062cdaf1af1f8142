"""deploy/k8s/raycluster.yaml + serve-ray.yaml: the RayCluster against KubeRay's own CRD schema (vendored in
deploy/k8s/raycluster.schema.json, unknown fields refused as kubectl's strict field validation does) and broken
copies failing it; its pod templates as strict core/v1 Pods; and the wiring: the server's Ray address is the
head's Service and GCS port, the server and every Ray pod mount one ReadWriteMany claim at one path, the Ray
version is pyproject's pin, the uid is the Dockerfile's, and the server's start script runs as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from ._util import DEPLOY, REPO, broken_copy, yaml_docs

jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

K8S_VERSION = "1.35.0"
DATA = "/data"
CRD = json.loads((DEPLOY / "k8s" / "raycluster.schema.json").read_text(encoding="utf-8"))
OBJECTS = {(d["kind"], d["metadata"]["name"]): d
           for f in ("raycluster.yaml", "serve-ray.yaml") for d in yaml_docs(DEPLOY / "k8s" / f)}
(RAYCLUSTER,) = [d for (kind, _), d in OBJECTS.items() if kind == "RayCluster"]
(SERVE,) = [d for (kind, _), d in OBJECTS.items() if kind == "Deployment"]


def strict(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema that refuses unknown fields: every object with declared
    properties and no additionalProperties gets ``additionalProperties: false`` (the API server prunes such
    fields, and kubectl's default strict field validation refuses them); ``nullable`` becomes a null type."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in ("enum", "required", "default") else
               {p: strict(s) for p, s in v.items()} if k == "properties" else strict(v))
           for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


SCHEMA = strict(CRD)


def errors(doc: dict[str, Any]) -> list[str]:
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
             for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)]
    # metadata is a bare object in a CRD schema; the API server checks it as ObjectMeta.
    try:
        kv.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")}, K8S_VERSION,
                    strict=True)
    except kv.ValidationError as e:
        found.append(f"metadata: {e.message}")
    return found


def groups() -> list[tuple[str, dict[str, Any]]]:
    """(name, group spec) of the head and every worker group."""
    spec = RAYCLUSTER["spec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def pods() -> dict[str, dict[str, Any]]:
    """The pod spec of the server and of each Ray group."""
    return {"serve": SERVE["spec"]["template"]["spec"], **{n: g["template"]["spec"] for n, g in groups()}}


def claim_at(pod: dict[str, Any], path: str) -> str:
    (c, *_) = pod["containers"]  # KubeRay runs Ray in the first container
    (name,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == name]
    return volume["persistentVolumeClaim"]["claimName"]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def ray_pin() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (req,) = [Requirement(r) for r in extras["ray"] if Requirement(r).name == "ray"]
    (spec,) = req.specifier
    assert spec.operator == "==", f"pyproject's ray extra must pin one version, not {req}"
    # KubeRay's probes ask the dashboard agent, which only ray[default] installs.
    assert "default" in req.extras, f"the ray extra needs ray[default] for KubeRay's probes, not {req}"
    return spec.version


# --- the vendored schema and the RayCluster against it ------------------------------------------------------

def test_schema_is_kuberays_crd_made_strict():
    assert "github.com/ray-project/kuberay" in CRD["$comment"] and "Apache License 2.0" in CRD["$comment"]
    assert re.search(r"tag v\d+\.\d+\.\d+, commit [0-9a-f]{40}", CRD["$comment"])
    assert "additionalProperties" not in CRD["properties"]["spec"]  # upstream's, unchanged; strict() adds it
    spec = SCHEMA["properties"]["spec"]
    assert spec["required"] == ["headGroupSpec"] and spec["additionalProperties"] is False
    worker = spec["properties"]["workerGroupSpecs"]["items"]
    assert set(worker["required"]) >= {"groupName", "template"}


def test_raycluster_validates():
    assert RAYCLUSTER["apiVersion"] == "ray.io/v1"
    assert errors(RAYCLUSTER) == []


BROKEN = [  # (path, value): value None deletes the key
    (["spec", "headGroupSpec", "rayStartParam"], {}),                         # typo: unknown field
    (["spec", "workerGroupSpec"], []),                                        # typo: unknown field
    (["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 0),             # ray start params are strings
    (["spec", "headGroupSpec", "template"], None),                            # required
    (["spec", "workerGroupSpecs", 0, "groupName"], None),                     # required
    (["spec", "workerGroupSpecs", 0, "replicas"], "two"),                     # int32
    (["spec", "enableInTreeAutoscaling"], "no"),                              # boolean
    (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "resource"], {}),  # a core field typo
    (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "name"], None),    # required
    (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "resources", "limits",
      "nvidia.com/gpu"], "eight"),                                            # not a quantity
    (["spec", "headGroupSpec", "template", "spec", "securityContext", "runAsUser"], "1000"),  # int64
    (["metadata", "labels"], "hdpo-ray"),                                     # ObjectMeta: a map
]


@pytest.mark.parametrize(("path", "value"), BROKEN, ids=["/".join(map(str, p)) for p, _ in BROKEN])
def test_a_broken_raycluster_fails(path, value):
    assert errors(broken_copy(RAYCLUSTER, path, value)), "the schema accepted a broken RayCluster"


@pytest.mark.parametrize("group", [n for n, _ in groups()], ids=lambda n: f"{n}-group")  # an id "gpu" is the GPU mark
def test_ray_pod_templates_are_strict_core_pods(group):
    """KubeRay makes pods of the templates; checked as core/v1 Pods with metadata, as the API server will."""
    template = dict(groups())[group]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"hdpo-ray-{group}", **template["metadata"]},
           "spec": template["spec"]}
    kv.validate(pod, K8S_VERSION, strict=True)


def test_the_expected_objects_exist():
    assert set(OBJECTS) == {("PersistentVolumeClaim", "hdpo-ray-data"), ("PersistentVolumeClaim", "hdpo-ray-hf-cache"),
                            ("RayCluster", "hdpo-ray"), ("Deployment", "hdpo-serve-ray"),
                            ("Service", "hdpo-serve-ray"), ("PersistentVolumeClaim", "hdpo-serve-ray-state")}


# --- wiring -------------------------------------------------------------------------------------------------

def test_head_runs_no_jobs_and_workers_bring_gpus():
    head = RAYCLUSTER["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"].get("num-gpus", "0") == "0"
    assert "nvidia.com/gpu" not in json.dumps(head["template"]["spec"]["containers"][0]["resources"])
    assert RAYCLUSTER["spec"]["workerGroupSpecs"]
    for g in RAYCLUSTER["spec"]["workerGroupSpecs"]:
        assert 0 < g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        resources = g["template"]["spec"]["containers"][0]["resources"]
        # KubeRay reads num-gpus from the limit; the request equals it (extended resources cannot overcommit).
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] > 0
        assert "num-gpus" not in g["rayStartParams"]
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])


def test_serve_points_at_the_heads_gcs():
    head = RAYCLUSTER["spec"]["headGroupSpec"]
    # KubeRay names the Service <name>-head-svc and the token Secret <name>, but cuts a name over 50 characters.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", RAYCLUSTER["metadata"]["name"])
    assert len(RAYCLUSTER["metadata"]["name"]) <= 50
    service = head.get("headService", {}).get("metadata", {}).get("name") or f"{RAYCLUSTER['metadata']['name']}-head-svc"
    port = head["rayStartParams"].get("port", "6379")  # ray start's default GCS port, as KubeRay assumes
    (gcs,) = [p for p in head["template"]["spec"]["containers"][0]["ports"] if p["name"] == "gcs-server"]
    assert str(gcs["containerPort"]) == port
    (c,) = SERVE["spec"]["template"]["spec"]["containers"]
    assert env(c)["HDPO_SERVE_EXECUTOR"] == "ray"
    assert env(c)["HDPO_SERVE_RAY_ADDRESS"] == f"{service}:{port}"
    assert SERVE["spec"]["replicas"] == 1 and SERVE["spec"]["strategy"]["type"] == "Recreate"


def test_ray_needs_the_clusters_token_and_serve_has_it():
    """Token mode: KubeRay makes the Secret <cluster name> (key auth_token) and gives it to the Ray pods; the
    server, which KubeRay does not manage, reads the same Secret."""
    assert RAYCLUSTER["spec"]["authOptions"]["mode"] == "token" and "secretName" not in RAYCLUSTER["spec"]["authOptions"]
    (c,) = SERVE["spec"]["template"]["spec"]["containers"]
    assert env(c)["RAY_AUTH_MODE"] == "token"
    (token,) = [e for e in c["env"] if e["name"] == "RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": RAYCLUSTER["metadata"]["name"], "key": "auth_token"}


def test_one_rwx_claim_at_one_path_everywhere():
    """Every job may run, or resume, on any Ray node: the data folder is one RWX volume at one path."""
    for name, pod in pods().items():
        claim = claim_at(pod, DATA)
        assert claim == "hdpo-ray-data", name
        assert OBJECTS[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("serve", *[n for n, _ in groups() if n != "head"]):
        claim = claim_at(pods()[name], "/cache/huggingface")
        assert OBJECTS[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"], name
        assert env(pods()[name]["containers"][0])["HF_HOME"] == "/cache/huggingface"
    # SQLite (WAL) stays off the network file system: its own ReadWriteOnce volume.
    (c,) = pods()["serve"]["containers"]
    db = env(c)["HDPO_SERVE_DB"].removeprefix("sqlite:///")
    state = claim_at(pods()["serve"], str(Path(db).parent))
    assert OBJECTS[("PersistentVolumeClaim", state)]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_uid_security_and_image_match_the_build():
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    uid = int(re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M).group(1))
    assert re.search(r'^ARG EXTRAS=""$', dockerfile, re.M)  # --extras ray of deploy/docker/build.sh
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, pod in pods().items():
        sc = pod["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"], sc["runAsNonRoot"]) == (uid, uid, uid, True), name
        c = pod["containers"][0]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        # A read-only root: Ray's session files and the jobs' scratch go to the /tmp emptyDir, Ray's object
        # store to a memory-backed /dev/shm.
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert env(c)["TMPDIR"] == "/tmp", name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"] and mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", name
        # One image everywhere, the one build.sh tags for the ray extra: Ray refuses a node of another version.
        assert c["image"].rsplit(":", 1)[1] == f"{version}-ray", name


def test_ray_version_is_pyprojects_pin():
    pin = ray_pin()
    assert RAYCLUSTER["spec"]["rayVersion"] == pin
    # KubeRay probes Ray >= 2.53 over HTTP; below it execs wget, which the image does not install.
    assert Version(pin) >= Version("2.53.0")


# --- the server's start script, run with stand-ins for ray and hdpo-tune ------------------------------------

def _run_start_script(tmp_path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ray", "hdpo-tune"):
        (bin_dir / tool).write_text("#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > "
                                    + shlex.quote(str(tmp_path / f"{tool}.argv")) + "\n", encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    (c,) = SERVE["spec"]["template"]["spec"]["containers"]
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env(c)}
    subprocess.run([*c["command"], *c["args"]], env=environ, check=True, timeout=30)
    argv = [(tmp_path / f"{t}.argv").read_bytes().decode().split("\0")[:-1] for t in ("ray", "hdpo-tune")]
    return argv[0], argv[1], env(c)


def test_serve_joins_as_an_empty_node_then_serves(tmp_path):
    ray_argv, serve_argv, environ = _run_start_script(tmp_path)
    flags = dict(zip(ray_argv[1::2], ray_argv[2::2], strict=True))
    assert ray_argv[0] == "start" and "--head" not in ray_argv
    assert flags["--address"] == environ["HDPO_SERVE_RAY_ADDRESS"]
    assert flags["--num-cpus"] == flags["--num-gpus"] == "0"  # nothing is ever placed on the server's node
    assert serve_argv[0] == "serve"
    opts = dict(zip(serve_argv[1::2], serve_argv[2::2], strict=True))
    assert opts["--data"] == DATA and opts["--model-root"].startswith(DATA + "/") and opts["--host"] == "0.0.0.0"
    svc = OBJECTS[("Service", "hdpo-serve-ray")]
    (port,) = SERVE["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert opts["--port"] == str(port["containerPort"]) and svc["spec"]["ports"][0]["targetPort"] == port["name"]
    # The server's own parser takes the arguments with the pod's environment (HDPO_SERVE_*).
    typer_main = pytest.importorskip("typer.main")
    from service.serve.cli import serve_app

    saved = dict(os.environ)
    try:
        os.environ.update(environ)
        ctx = typer_main.get_command(serve_app).make_context("serve", serve_argv[1:])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert ctx.params["data"] == Path(DATA) and ctx.params["db"] == environ["HDPO_SERVE_DB"]
    # A job may take one worker's GPUs (one process per GPU).
    from service.serve.limits import parse_limits

    gpus = RAYCLUSTER["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert parse_limits(ctx.params["limit"]).max_processes == gpus["nvidia.com/gpu"]
    if "executor" in ctx.params:  # the Ray executor's options
        assert ctx.params["executor"] == "ray"


def test_ray_start_options_exist_in_the_pinned_ray(tmp_path):
    """The server's `ray start` flags and every rayStartParams key (KubeRay passes each as --key value)."""
    ray = pytest.importorskip("ray", reason="pip install 'hdpo-tune[ray]'")
    if ray.__version__ != ray_pin():
        pytest.skip(f"ray {ray.__version__} installed, the pin is {ray_pin()}")
    from ray.scripts.scripts import start

    ray_argv, _, _ = _run_start_script(tmp_path)
    start.make_context("start", ray_argv[1:])
    options = {o for p in start.params for o in p.opts}
    for name, group in groups():
        assert {f"--{k}" for k in group["rayStartParams"]} <= options, name
