"""Bad inputs through the real console script (issue 13): ``--debug`` keeps exit code 2, ``hdpo.alpha: .nan`` is
one consistent line, a broken ``save_to_disk`` folder is one line, and a tokenizer whose ids have no embedding
row is caught by ``validate`` and by ``run`` before the forward pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.reliability._jobs import write_job
from tests.reliability._proc import hdpo, one_error


def test_debug_keeps_exit_code_2_and_adds_the_traceback(tmp_path: Path, tiny_model_dir: Path,
                                                        tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, extra={"train": {"batch_size": "8"}})
    plain = hdpo("run", str(job))
    debug = hdpo("--debug", "run", str(job))
    assert plain.returncode == debug.returncode == 2, (plain.stderr, debug.stderr)
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr
    assert one_error(plain) in debug.stderr


def test_alpha_nan_is_one_line(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs)
    job.write_text(job.read_text().replace("alpha: 0.9", "alpha: .nan"))
    for command in ("run", "validate"):
        proc = hdpo(command, str(job))
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if "hdpo.alpha" in ln]
        assert len(lines) == 1 and "finite number" in lines[0] and "nan" in lines[0], proc.stderr


def test_broken_save_to_disk_folder_is_one_line(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    import datasets

    rows = [json.loads(x) for x in tiny_pairs.read_text().splitlines()]
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    for arrow in folder.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:40])  # truncated data file
    job = write_job(tmp_path, tiny_model_dir, folder)
    for command in ("validate", "run"):
        proc = hdpo(command, str(job))
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert f"{folder}: cannot read the save_to_disk dataset folder" in proc.stderr, proc.stderr[-3000:]


def test_tokenizer_beyond_the_embedding_is_caught_before_training(tmp_path: Path, tiny_model_dir: Path,
                                                                   tiny_pairs: Path) -> None:
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    rows = json.loads((model / "config.json").read_text())["vocab_size"]
    tok = AutoTokenizer.from_pretrained(str(model))
    tok.add_tokens(["<zz-new-word>"])  # id == rows: no embedding row for it
    tok.save_pretrained(str(model))
    pairs = [json.loads(x) for x in tiny_pairs.read_text().splitlines()]
    pairs[3]["chosen"] += " <zz-new-word>"
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    job = write_job(tmp_path, model, data)
    check = hdpo("validate", str(job))
    assert check.returncode == 2, check.stdout + check.stderr
    assert f"token id {rows} is beyond the model's embedding ({rows} rows" in check.stderr, check.stderr
    run = hdpo("run", str(job))
    assert run.returncode == 2, run.stderr[-3000:]
    line = one_error(run)
    assert f"token id {rows} is beyond the model's embedding ({rows} rows)" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert yaml.safe_load((tmp_path / "run" / "job.resolved.yaml").read_text())["data"]["train"] == str(data)
