"""Import helpers for the demo scripts in ``examples/demo`` (not a package: the build runs as a script)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[2] / "examples" / "demo"
if str(DEMO_DIR) not in sys.path:
    sys.path.insert(0, str(DEMO_DIR))


def read_checksums(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from ``folder/CHECKSUMS.sha256`` (sha256sum format)."""
    out = {}
    for line in (folder / "CHECKSUMS.sha256").read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        out[name] = digest
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
