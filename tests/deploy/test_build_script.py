"""deploy/docker/build.sh and its pip-configuration pass-through (pip_config.py): what goes into the build.

The build itself runs in `make test-container` (tests/container); these checks need no container engine.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from ._util import DEPLOY, REPO

PIP_CONFIG = DEPLOY / "docker" / "pip_config.py"


def _convert(tmp_path: Path, engine: str, listing: str) -> tuple[configparser.ConfigParser, list[str], str]:
    (tmp_path / "list").write_text(listing, encoding="utf-8")
    out = subprocess.run([sys.executable, str(PIP_CONFIG), engine, str(tmp_path / "list"), str(tmp_path / "pip.conf")],
                         capture_output=True, text=True, timeout=60, check=True)
    conf = configparser.ConfigParser()
    conf.read(tmp_path / "pip.conf", encoding="utf-8")
    return conf, out.stdout.split(), out.stderr


def _host_layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    index = tmp_path / "mirror" / "simple"
    wheels = tmp_path / "wheels"
    cert = tmp_path / "ca.pem"
    index.mkdir(parents=True)
    wheels.mkdir()
    cert.write_text("cert", encoding="utf-8")
    return index, wheels, cert


def test_podman_gets_one_merged_file_and_every_local_path_to_mount(tmp_path: Path) -> None:
    index, wheels, cert = _host_layout(tmp_path)
    listing = (f"global.index-url='https://user:pw@mirror.example/simple'\n"
               f"global.extra-index-url='file://{index} https://other.example/simple'\n"
               f"global.find-links='{wheels}'\n"
               f"global.cert='{tmp_path}/old.pem'\n"  # overridden by PIP_CERT below
               f"install.trusted-host='mirror.example'\n"
               f":env:.cert='{cert}'\n"
               f":env:.default-timeout='180'\n")
    conf, mounts, err = _convert(tmp_path, "podman", listing)
    assert conf["global"]["index-url"] == "https://user:pw@mirror.example/simple"
    assert conf["global"]["extra-index-url"] == f"file://{index} https://other.example/simple"
    assert conf["global"]["find-links"] == str(wheels)
    assert conf["global"]["cert"] == str(cert) and conf["global"]["default-timeout"] == "180"
    assert conf["install"]["trusted-host"] == "mirror.example"
    # a file index's simple/ links to ../../files/, so its parent is mounted whole
    assert mounts == [str(index.parent), str(wheels), str(cert)]
    assert err == ""


def test_docker_leaves_local_paths_out_and_says_so(tmp_path: Path) -> None:
    index, wheels, _ = _host_layout(tmp_path)
    listing = (f"global.extra-index-url='file://{index} https://other.example/simple'\n"
               f"global.find-links='{wheels}'\n")
    conf, mounts, err = _convert(tmp_path, "docker", listing)
    assert mounts == []
    assert conf["global"]["extra-index-url"] == "https://other.example/simple"
    assert "find-links" not in conf["global"]
    assert len(err.splitlines()) == 2 and all("docker builds cannot mount host folders" in ln for ln in err.splitlines())


def test_a_missing_local_path_is_left_out_with_one_line(tmp_path: Path) -> None:
    conf, mounts, err = _convert(tmp_path, "podman", f"global.find-links='{tmp_path}/gone'\n")
    assert mounts == [] and not conf.has_option("global", "find-links")
    assert err.strip() == f"build.sh: pip find-links {tmp_path}/gone left out: {tmp_path}/gone does not exist"


def test_no_pip_configuration_gives_an_empty_file(tmp_path: Path) -> None:
    conf, mounts, _ = _convert(tmp_path, "podman", "")
    assert mounts == [] and conf.sections() == []


@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "gpu"], "--variant must be cpu or cuda, not 'gpu'"),
    (["--engine", "lxc"], "--engine must be podman or docker, not 'lxc'"),
    (["--tag"], "--tag needs a value"),
    (["--colour", "red"], "unknown option --colour"),
    (["--extras", "ray;rm -rf /"], "--extras must be extras of pyproject.toml separated by commas"),
    (["--extras", "ray,rai"], "--extras: pyproject.toml has no optional extra 'rai'"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = subprocess.run(["bash", str(DEPLOY / "docker" / "build.sh"), *args], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr, out.stderr
