"""Turns the build host's `pip config list` into one pip.conf for the image build, and lists the local files and
folders it names (deploy/docker/build.sh mounts them read-only into the build with podman).

Why: pip inside a container build sees none of the host's pip.conf files or PIP_* variables, so a host behind
a mirror, proxy or private CA (or with wheels on local disk) cannot build the image. One merged file passed as
a build secret carries all of it without storing it in a layer (index URLs may hold credentials).

    python3 pip_config.py ENGINE CONFIG_LIST OUT_CONF   # prints one host path to mount per line
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

# Keys whose value is a whitespace-separated list that may hold URLs or local paths.
LOCATION_KEYS = {"index-url", "extra-index-url", "find-links", "cert", "client-cert", "constraint",
                 "requirement", "build-constraint", "trusted-host"}
INDEX_KEYS = {"index-url", "extra-index-url"}


def parse(listing: str) -> dict[str, dict[str, str]]:
    """{section: {key: value}} from `pip config list` lines `section.key='value'`; PIP_* variables (section
    `:env:`) override the files, as they do for pip itself, and land in [global]."""
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.partition(".")
        if not sep or not dot:
            continue
        value = str(ast.literal_eval(raw))
        if section == ":env:":
            env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(env)
    return files


def local_path(token: str) -> Path | None:
    """The host path a config token names, or None for a remote URL or a plain word."""
    if token.startswith("file://"):
        return Path(unquote(urlparse(token).path))
    return Path(token) if token.startswith("/") else None


def mount_for(key: str, path: Path) -> Path:
    """What to mount for a path: a file index's `simple/` links to its files one level up (../../files/x.whl
    from simple/<name>/), so its parent goes in whole."""
    return path.parent if key in INDEX_KEYS and path.name == "simple" else path


def rewrite(config: dict[str, dict[str, str]], engine: str) -> tuple[dict[str, dict[str, str]], list[Path]]:
    """The config to write and the host paths to mount. Paths that do not exist, and with docker every local
    path (a docker build cannot mount host folders), are left out with one line each on stderr."""
    out: dict[str, dict[str, str]] = {}
    mounts: list[Path] = []
    for section, items in config.items():
        for key, value in items.items():
            if key not in LOCATION_KEYS:
                out.setdefault(section, {})[key] = value
                continue
            kept = []
            for token in value.split():
                path = local_path(token)
                if path is None:
                    kept.append(token)
                elif engine == "docker":
                    print(f"build.sh: pip {key} {token} left out: docker builds cannot mount host folders "
                          "(use podman, or serve it over HTTP)", file=sys.stderr)
                elif not path.exists():
                    print(f"build.sh: pip {key} {token} left out: {path} does not exist", file=sys.stderr)
                else:
                    kept.append(token)
                    if mount_for(key, path) not in mounts:
                        mounts.append(mount_for(key, path))
            if kept:
                out.setdefault(section, {})[key] = " ".join(kept)
    return out, mounts


def render(config: dict[str, dict[str, str]]) -> str:
    """pip.conf text (INI); multi-valued settings stay space-separated, as pip reads them."""
    lines = []
    for section, items in config.items():
        if items:
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in items.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    engine, listing, out_conf = argv
    config, mounts = rewrite(parse(Path(listing).read_text(encoding="utf-8")), engine)
    Path(out_conf).write_text(render(config), encoding="utf-8")
    print("\n".join(str(m) for m in mounts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
