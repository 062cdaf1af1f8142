"""deploy/k8s/serve.yaml: strict schema validation (as tests/deploy/test_k8s.py does for every manifest) and
the wiring between the Deployment, the Service, the probes and the volumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy/k8s/serve.yaml"
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


def _objects() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_validates_strictly():
    for doc in _objects().values():
        kv.validate(doc, "1.35.0", strict=True)


def test_wiring():
    objs = _objects()
    dep, svc = objs["Deployment"], objs["Service"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[0] == "serve" and args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = args[args.index("--data") + 1]
    claim = volumes[mounts[data]]["persistentVolumeClaim"]["claimName"]
    assert claim == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert args[args.index("--model-root") + 1].startswith(data + "/")
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    (token,) = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
    assert "valueFrom" in token  # from the Secret, never inline
