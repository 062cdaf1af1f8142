"""The console in a real browser (headless Debian Chromium through Playwright) against a real
``hdpo-tune serve``: sign in, a running job's curves gain points, cancel with confirmation, compare two finished
jobs with different alphas, the new-job form (a bad row shown at the file field, a spec error at its field, a
good job started), script payloads shown as text, another key's job a 404 page. One server, one browser and
three tiny jobs for the whole module; every page is saved as a screenshot and checked not blank."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._browser import XSS, launch, require_chromium, shoot, watch_errors
from ._server import Server, create_key, demo_rows, wait_for

require_chromium()
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

TASKS = Path(__file__).resolve().parents[2] / "examples/demo/data/tasks_eval.jsonl"


def tiny_spec(train: str, alpha: float, steps: int, tasks: str | None = None) -> dict:
    spec = {"model": {"name_or_path": "demo"}, "data": {"train": train, "max_length": 128},
            "lora": {"r": 4, "alpha": 8}, "hdpo": {"alpha": alpha, "beta": 1.0},
            "train": {"max_steps": steps, "micro_batch_size": 2, "batch_size": 4, "save_every": 2, "log_every": 1}}
    if tasks:
        spec["eval"] = {"tasks": tasks, "verifier": "math", "n_samples": 4, "temperatures": [0.5, 1.0],
                        "max_new_tokens": 12}
    return spec


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[dict]:
    """A server with 2 workers: a long job (watched, then cancelled) and two finished-to-be jobs (alpha 0.8 and
    1.2, with a tiny evaluation) whose metadata and training file name carry script payloads."""
    data = tmp_path_factory.mktemp("console") / "data"
    alice, bob = create_key(data, "alice"), create_key(data, "bob")
    server = Server(data, model_root, extra=("--workers", "2")).start()
    client = server.client(alice)
    pairs = client.files.create(file=(f"{XSS}.jsonl", demo_rows(24)), purpose="fine-tune")
    tasks = "".join(TASKS.read_text(encoding="utf-8").splitlines(keepends=True)[:4]).encode()
    task_file = client.files.create(file=("tasks.jsonl", tasks), purpose="user_data")

    def create(spec: dict, suffix: str) -> str:
        job = client.post("/hdpo/jobs", body={"spec": spec, "suffix": suffix, "metadata": {"note": XSS}},
                          cast_to=object)
        return str(job["id"])

    long_job = create(tiny_spec(pairs.id, 0.9, 400), "long")
    low = create(tiny_spec(pairs.id, 0.8, 3, task_file.id), "low")
    high = create(tiny_spec(pairs.id, 1.2, 3, task_file.id), "high")
    yield {"server": server, "base": f"http://127.0.0.1:{server.port}", "alice": alice, "bob": bob,
           "client": client, "long": long_job, "low": low, "high": high, "pairs": pairs.id}
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with sync_api.sync_playwright() as pw:
        b = launch(pw, tmp_path_factory.mktemp("chromium"))
        yield b
        b.close()


def signed_in(browser, site: dict, key: str):  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    errors = watch_errors(page)
    page.goto(site["base"] + "/")
    page.fill("#api-key", key)
    page.click("#signin-form button")
    page.wait_for_selector("table.jobs")
    return ctx, page, errors


def test_sign_in_keeps_the_key_out_of_the_page(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    errors = watch_errors(page)
    page.goto(site["base"] + "/")
    page.wait_for_selector("#api-key")
    shoot(page, tmp_path, "signin")
    page.fill("#api-key", "hdpo-sk-not-a-key")
    page.click("#signin-form button")
    expect(page.locator("#signin-error")).to_contain_text("Incorrect API key")
    page.fill("#api-key", site["alice"])
    page.click("#signin-form button")
    page.wait_for_selector(f"tr[data-id='{site['low']}']")
    shoot(page, tmp_path, "jobs")
    cookie = next(c for c in ctx.cookies() if c["name"] == "hdpo_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and site["alice"] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
    assert site["alice"] not in page.content() and site["alice"] not in page.url
    page.select_option("#filter-state", "succeeded")
    page.fill("#filter-text", "long")
    page.wait_for_selector("td.empty")
    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert not [c for c in ctx.cookies() if c["name"] == "hdpo_console"]
    assert errors == [] or all("401" in e for e in errors), errors
    ctx.close()


def test_a_running_jobs_curves_gain_points_then_cancel(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx, page, errors = signed_in(browser, site, site["alice"])
    wait_for(site["client"], site["long"], until=lambda j: (j.hdpo_tune or {}).get("step", 0) >= 2, timeout=300)
    page.goto(f"{site['base']}/jobs/{site['long']}")
    page.wait_for_selector("#curves .chart-card")
    def drawn() -> int:  # "N points drawn · last step S" (0 before the first draw)
        words = (page.text_content("#curve-note") or "").split()
        return int(words[0]) if words and words[0].isdigit() else 0

    first = drawn()
    # the page's CSP forbids eval, so Playwright's wait_for_function cannot run: poll from here
    deadline = time.monotonic() + 120
    while drawn() <= first:
        assert time.monotonic() < deadline, "the running job's curves gained no points"
        page.wait_for_timeout(500)
    assert page.locator("#curves .chart-card").count() >= 6  # loss, reward accuracy, entropy, alpha, lr, ...
    shoot(page, tmp_path, "job-running")
    page.click("#cancel-job")
    page.wait_for_selector("#cancel-dialog[open]")
    shoot(page, tmp_path, "cancel-confirm")
    page.click("#cancel-keep")  # the first answer is "no": nothing happens
    assert site["client"].fine_tuning.jobs.retrieve(site["long"]).status == "running"
    page.click("#cancel-job")
    page.click("#cancel-confirm")
    job = wait_for(site["client"], site["long"], timeout=300)
    assert job.status == "cancelled"
    page.wait_for_selector("#job-name .st-cancelled", timeout=30_000)
    assert not [e for e in errors if "pageerror" in e or "dialog" in e], errors
    ctx.close()


def test_compare_two_finished_jobs_with_different_alphas(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for job_id in (site["low"], site["high"]):
        assert wait_for(site["client"], job_id, timeout=600).status == "succeeded"
    ctx, page, errors = signed_in(browser, site, site["alice"])
    page.goto(f"{site['base']}/jobs/{site['low']}")
    page.wait_for_selector("#eval .chart-card")
    page.wait_for_selector("#artifacts a.btn")
    shoot(page, tmp_path, "job-finished")
    href = page.locator("#artifacts a.btn", has_text="final.tar").get_attribute("href")
    tar = page.request.get(site["base"] + href)  # the page's cookie, as a click would send it
    assert tar.status == 200 and tar.headers["content-type"] == "application/x-tar" and len(tar.body()) > 10_000
    page.goto(f"{site['base']}/compare?ids={site['low']},{site['high']}&select=accuracy@t1.0")
    page.wait_for_selector("#paper-views .chart-card")
    rows = page.locator("#compare-table tbody tr")
    assert rows.count() == 2
    assert page.locator("#compare-table tr.best").count() == 1 and "best" in page.text_content("#compare-table")
    titles = page.locator("#compare-out h4").all_text_contents()
    assert {"Loss", "Alpha", "Accuracy vs temperature", "pass@k vs k (T=1.0 or highest)", "Entropy vs alpha"} <= set(titles)
    shoot(page, tmp_path, "compare")
    assert not [e for e in errors if "pageerror" in e or "dialog" in e], errors
    ctx.close()


def test_new_job_form_bad_file_spec_error_and_a_good_job(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx, page, errors = signed_in(browser, site, site["alice"])
    page.click("#new-job")
    page.wait_for_selector("#new-job-form")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(demo_rows(2) + b'{"prompt": "x", "chosen": "y"}\n')
    page.set_input_files("#upload", str(bad))
    expect(page.locator("#error-train")).to_contain_text("bad.jsonl:3")
    shoot(page, tmp_path, "new-job-row-error")
    good = tmp_path / "good.jsonl"
    good.write_bytes(demo_rows(8))
    page.set_input_files("#upload", str(good))
    expect(page.locator("#train option:checked")).to_contain_text("good.jsonl")
    assert page.text_content("#error-train") == ""
    page.fill("#beta", "-1")
    page.click("#submit-job")
    expect(page.locator("#error-beta")).to_contain_text("hdpo.beta")
    page.fill("#beta", "0.5")
    page.select_option("#alpha-mode", "auto")
    page.fill("#target", "0.6")
    page.fill("#steps", "2")
    page.fill("#suffix", "from-form")
    preview = json.loads(page.text_content("#spec-preview"))
    assert preview["spec"]["hdpo"] == {"beta": 0.5, "alpha": "auto", "target_entropy": 0.6}
    shoot(page, tmp_path, "new-job")
    page.click("#submit-job")
    page.wait_for_url(f"{site['base']}/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job-name")
    assert page.text_content("#job-name").startswith("from-form")
    site["client"].fine_tuning.jobs.cancel(job_id)  # nothing more to learn from training it
    assert not [e for e in errors if "pageerror" in e or "dialog" in e], errors
    ctx.close()


def test_payloads_are_text_and_another_keys_job_is_a_404(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx, page, errors = signed_in(browser, site, site["alice"])
    page.goto(f"{site['base']}/jobs/{site['low']}")
    page.wait_for_selector("#job-name")
    expect(page.locator("#main")).to_contain_text("metadata.note")
    assert XSS in page.text_content("body")  # shown, as text
    page.goto(f"{site['base']}/new")
    expect(page.locator("#train")).to_contain_text(".jsonl")
    assert "<img src=x onerror=" in page.text_content("#train")  # the uploaded file name, shown as text
    for url in ("/", f"/jobs/{site['low']}", "/new"):
        page.goto(site["base"] + url)
        page.wait_for_timeout(800)
        assert page.evaluate("window.__xss") is None
        assert page.locator("img[src='x']").count() == 0
    assert not [e for e in errors if "dialog" in e], errors
    ctx.close()
    ctx, page, errors = signed_in(browser, site, site["bob"])
    response = page.goto(f"{site['base']}/jobs/{site['low']}")
    assert response is not None and response.status == 404
    page.wait_for_selector("#not-found")
    shoot(page, tmp_path, "not-found")
    assert site["alice"] not in page.content() and "hf_" not in page.content()
    ctx.close()


def test_the_server_stays_quiet_about_secrets(site: dict) -> None:
    """No key or HF_TOKEN in the static files the pages load."""
    import urllib.request

    from ._server import FAKE_HF_TOKEN

    for path in ("/", "/console/static/js/app.js", "/console/static/js/api.js", "/console/static/js/job.js"):
        with urllib.request.urlopen(site["base"] + path, timeout=30) as r:
            body = r.read().decode()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert site["alice"] not in body and FAKE_HF_TOKEN not in body


def _local_runs(site: dict, root: Path) -> Path:
    """A folder like a user's ``runs/``: a quickstart-like run, a sweep (two alphas, ``sweep.json``) and a run
    whose folder name, error line, metric name and eval result kind carry script payloads."""
    import shutil

    runs_dir = site["server"].data / "runs"
    shutil.copytree(runs_dir / site["low"], root / "quickstart", symlinks=True)
    sweep = root / "sweep-demo" / "sweep"
    for alpha, job in (("0.8", site["low"]), ("1.2", site["high"])):
        shutil.copytree(runs_dir / job, sweep / f"alpha-{alpha}", symlinks=True)
        (sweep / f"job-alpha-{alpha}.yaml").write_text("{}\n")
    (sweep / "sweep.json").write_text(json.dumps({"metric": "accuracy@t0.5", "scores": {}, "winner": 0.8}))
    evil = root / XSS
    evil.mkdir()
    (evil / "status.json").write_text(json.dumps({"stage": "train", "state": "failed", "error": XSS, "step": 1}))
    (evil / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, XSS: 1.0}) + "\n")
    (evil / "eval").mkdir()
    (evil / "eval" / "results.json").write_text(json.dumps({XSS: {XSS: XSS}}))
    (evil / "onnx").mkdir()
    (evil / "onnx" / "validation.json").write_text(json.dumps({"passed": True, "max_abs_diff": 1e-5, "note": XSS}))
    return root


def test_read_only_ui_over_a_run_and_a_sweep(browser, site: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from ._server import HDPO_TUNE, env, free_port

    for job_id in (site["low"], site["high"]):
        assert wait_for(site["client"], job_id, timeout=600).status == "succeeded"
    root = _local_runs(site, tmp_path / "runs")
    port = free_port()
    log = (tmp_path / "ui.log").open("wb")
    proc = subprocess.Popen([HDPO_TUNE, "ui", str(root), "--port", str(port)], env=env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = watch_errors(page)
        deadline = time.monotonic() + 60
        while True:
            try:
                page.goto(base + "/")
                break
            except sync_api.Error:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.5)
        page.wait_for_selector("table.jobs tbody tr[data-id]")
        assert page.locator("table.jobs tbody tr[data-id]").count() == 4
        assert page.locator("#new-job").count() == 0  # read-only: no form, no cancel
        shoot(page, tmp_path, "ui-runs")
        page.click("text=quickstart")
        page.wait_for_selector("#eval .chart-card")
        assert page.locator("#cancel-job").count() == 0
        shoot(page, tmp_path, "ui-run")
        page.goto(base + "/compare")
        page.select_option("#sweep-pick", label=page.locator("#sweep-pick option").nth(1).text_content())
        page.wait_for_selector("#paper-views .chart-card")
        expect(page.locator("#select-metric")).to_have_value("accuracy@t0.5")
        assert page.locator("#compare-table tr.best").count() == 1
        shoot(page, tmp_path, "ui-sweep")
        page.goto(base + "/")
        page.click(f"text={XSS}")
        expect(page.locator("#main")).to_contain_text(f"Results: {XSS}")
        expect(page.locator("#reports")).to_contain_text("ONNX parity")
        assert page.evaluate("window.__xss") is None and page.locator("img[src='x']").count() == 0
        assert not [e for e in errors if "pageerror" in e or "dialog" in e], errors
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
