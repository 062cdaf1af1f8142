"""deploy/kubeflow/trainjob.yaml: valid against the repo's TrainJob JSON schema (and broken copies are not),
its pod patch is a valid core/v1 Pod, and its launch script maps the runtime's PET_* variables onto
`accelerate launch` so that accelerate hands torchrun the right rendezvous."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import warnings
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

from ._util import DEPLOY, broken_copy, yaml_docs

jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")

SCHEMA = json.loads((DEPLOY / "kubeflow" / "trainjob.schema.json").read_text(encoding="utf-8"))
(TRAINJOB,) = yaml_docs(DEPLOY / "kubeflow" / "trainjob.yaml")
RESERVED = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}


def errors(doc) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)]


def test_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False
    assert set(SCHEMA["required"]) == {"apiVersion", "kind", "metadata", "spec"}
    defs = SCHEMA["$defs"]
    assert defs["TrainJobSpec"]["required"] == ["runtimeRef"]
    assert defs["RuntimeRef"]["required"] == ["name"]
    for closed in ("TrainJobSpec", "RuntimeRef", "Trainer", "EnvVar", "RuntimePatch", "PodSpecPatch"):
        assert defs[closed]["additionalProperties"] is False, closed


def test_trainjob_validates():
    assert errors(TRAINJOB) == []
    assert TRAINJOB["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and TRAINJOB["kind"] == "TrainJob"
    assert TRAINJOB["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert TRAINJOB["spec"]["trainer"]["numNodes"] > 1


BROKEN = [  # (path, value): value None deletes the key
    (["spec", "runtimeRef"], None),                              # required
    (["spec", "runtimeRef", "name"], ""),                        # MinLength=1
    (["spec", "trainer", "numProcsPerNode"], 8),                 # typo: the API is closed
    (["spec", "trainer", "numNodes"], "2"),                      # int32, not a string
    (["spec", "trainer", "image"], "x" * 501),                   # MaxLength=500
    (["metadata", "name"], "HDPO_Job"),                          # RFC 1035 (the rendezvous host name)
    (["apiVersion"], "kubeflow.org/v1"),
    (["kind"], "PyTorchJob"),
    (["spec", "podTemplateOverrides"], []),                      # pre-v2.2 field, gone from the API
    (["spec", "runtimePatches", 0, "manager"], None),            # required
    (["spec", "trainer", "env", 0, "name"], None),               # EnvVar.name required
    (["spec", "trainer", "resourcesPerNode", "limits", "nvidia.com/gpu"], "eight"),  # not a quantity
    (["spec", "managedBy"], "me"),                               # enum
    (["spec", "activeDeadlineSeconds"], 0),                      # Minimum=1
]


@pytest.mark.parametrize(("path", "value"), BROKEN, ids=["/".join(map(str, p)) for p, _ in BROKEN])
def test_broken_copies_fail(path, value):
    assert errors(broken_copy(TRAINJOB, path, value)), "the schema accepted a broken TrainJob"


def _pod_patch() -> dict:
    (patch,) = TRAINJOB["spec"]["runtimePatches"]
    (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == "node"
    return rj["template"]["spec"]["template"]["spec"]


def test_pod_patch_is_a_valid_core_pod():
    """The parts the schema leaves open (volume sources, tolerations, security context) as a core/v1 Pod."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    spec = copy.deepcopy(_pod_patch())
    trainer = TRAINJOB["spec"]["trainer"]
    (node,) = spec.pop("containers")
    assert node["name"] == "node"
    container = {**node, "image": trainer["image"], "command": trainer["command"], "args": trainer["args"],
                 "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node"},
           "spec": {**spec, "containers": [container]}}
    kv.validate(pod, "1.35.0", strict=True)
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in node["volumeMounts"]} <= volumes


def test_references_and_resources():
    trainer = TRAINJOB["spec"]["trainer"]
    assert not [e["name"] for e in trainer["env"] if e["name"].startswith("PET_") or e["name"] in RESERVED]
    assert trainer["numProcPerNode"] == trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in _pod_patch()["volumes"] if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"]: d for d in yaml_docs(DEPLOY / "kubeflow" / "pvc.yaml")}
    assert claims == set(pvcs)
    assert all(pvcs[c]["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims)  # shared by all nodes
    (secret,) = yaml_docs(DEPLOY / "k8s" / "secret.yaml")
    ref = next(e for e in trainer["env"] if e["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    (cm,) = yaml_docs(DEPLOY / "k8s" / "configmap.yaml")
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in _pod_patch()["volumes"])


# --- the PET_* mapping -----------------------------------------------------------------------------------

def _run_launch_script(tmp_path: Path, pet: dict[str, str]) -> list[str]:
    """Run trainer.command/args with made-up PET_* values and stand-ins for accelerate and python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    (bin_dir / "accelerate").write_text(
        "#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > " + shlex.quote(str(record)) + "\n", encoding="utf-8")
    (bin_dir / "python").write_text("#!/usr/bin/env bash\necho 4\n", encoding="utf-8")  # "4 GPUs visible"
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    trainer = TRAINJOB["spec"]["trainer"]
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **pet}
    subprocess.run([*trainer["command"], *trainer["args"]], env=env, check=True, timeout=30)
    return record.read_bytes().decode().split("\0")[:-1]


def _accelerate_view(argv: list[str]):
    """What accelerate does with that command line: the torchrun arguments and environment it builds."""
    assert argv[0] == "launch"
    argv = list(argv[1:])
    i = argv.index("--config_file")
    in_image = Path(argv[i + 1])
    assert in_image.parent == Path("/opt/hdpo/accelerate")  # where the Dockerfile copies deploy/accelerate
    argv[i + 1] = str(DEPLOY / "accelerate" / in_image.name)
    args = launch_command_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)  # machine_rank > 0: no local port check
    return args, env


PET = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_PORT": "29500",
       "PET_MASTER_ADDR": "hdpo-tune-multinode-node-0-0.hdpo-tune-multinode"}


def test_pet_variables_become_accelerate_flags(tmp_path):
    argv = _run_launch_script(tmp_path, {**PET, "PET_NPROC_PER_NODE": "8"})
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--num_machines"] == "2" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == PET["PET_MASTER_ADDR"] and flags["--main_process_port"] == "29500"
    assert flags["--num_processes"] == "16"  # the total, as accelerate expects
    assert argv[-4:] == ["--no_python", "hdpo-tune", "run", "/work/spec/job.yaml"]

    args, env = _accelerate_view(argv)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_backend == "static"
    assert args.rdzv_endpoint == f"{PET['PET_MASTER_ADDR']}:29500"
    assert args.no_python and args.training_script == "hdpo-tune"
    assert args.training_script_args == ["run", "/work/spec/job.yaml"]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"


def test_auto_nproc_counts_the_visible_gpus(tmp_path):
    argv = _run_launch_script(tmp_path, {**PET, "PET_NPROC_PER_NODE": "auto"})
    args, _ = _accelerate_view(argv)
    assert args.num_processes == 8 and args.nproc_per_node == "4"  # 2 nodes x the 4 GPUs the stand-in reports


def test_master_addr_follows_the_trainjob_name():
    """The Torch plugin sets PET_MASTER_ADDR to <name>-node-0-0.<name>; that must stay a valid DNS name."""
    name = TRAINJOB["metadata"]["name"]
    host = f"{name}-node-0-0.{name}"
    assert PET["PET_MASTER_ADDR"] == host
    assert all(len(label) <= 63 for label in host.split("."))
