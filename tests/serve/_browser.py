"""Headless Chromium for the console tests: the Debian ``chromium`` package driven by Playwright (never a
browser Playwright downloads). Without chromium the tests skip, except under CI (``CI`` or
``HDPO_REQUIRE_BROWSER`` set, as ``.ci/run`` does), where they fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HDPO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: a payload in every field a user controls; it must show as text and never run
XSS = '<img src=x onerror="window.__xss=1">'


def require_chromium() -> str:
    if not Path(CHROMIUM).is_file():
        reason = f"no Chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") or os.environ.get("HDPO_REQUIRE_BROWSER"):
            pytest.fail(reason + "; CI must run the browser tests (.ci/run installs it)")
        pytest.skip(reason)
    pytest.importorskip("playwright", reason="pip install -e .[browser]")
    return CHROMIUM


def launch(playwright, user_data: Path):  # type: ignore[no-untyped-def]
    """A fresh browser (its own profile folder); Playwright's own temp profile is used under the hood."""
    return playwright.chromium.launch(executable_path=require_chromium(), headless=True,
                                      args=[*FLAGS, f"--disk-cache-dir={user_data}"])


def not_blank(path: Path) -> float:
    """Pixel standard deviation of a screenshot (a blank page is ~0)."""
    from PIL import Image, ImageStat

    with Image.open(path) as img:
        return float(sum(ImageStat.Stat(img.convert("L")).stddev))


def shoot(page, out: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert not_blank(path) > 10, f"{name}: the screenshot is blank"
    return path


def watch_errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    """Collect page errors, console errors and dialogs (a payload that ran would open one or set __xss)."""
    seen: list[str] = []
    page.on("pageerror", lambda e: seen.append(f"pageerror: {e}"))
    page.on("console", lambda m: seen.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("dialog", lambda d: (seen.append(f"dialog: {d.message}"), d.dismiss()))
    return seen

