"""Data-parallel training on CPU (gloo): 2 launched processes against 1, kill/resume, who writes files, and the
`hdpo-tune launch` command line. Real launches (`accelerate launch`, `torchrun`) run as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from service.cli import app
from service.launch import build_command, launch_env

ROOT = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).resolve().parent / "audit"
PY = sys.executable


def write_job(folder: Path, model: Path, pairs: Path, *, lora: bool, steps: int = 4, **train) -> Path:
    spec = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "hdpo": {"alpha": 0.9, "beta": 0.1},
        "train": {"max_steps": steps, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 1e-3,
                  "save_every": 2, "seed": 0, **train},
        "output": {"dir": str(folder / "run")},
    }
    if lora:
        spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


def losses(run: Path) -> torch.Tensor:
    return torch.tensor([json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()],
                        dtype=torch.float64)


def run_one_process(job: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{AUDIT}{os.pathsep}{ROOT}",
           "HDPO_AUDIT_WRITES": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    out.pop("HDPO_STALL_AT_STEP", None)
    out.update(extra)
    return out


def launched(cmd: list[str], extra_env: dict[str, str] | None = None, timeout: float = 150) -> str:
    res = subprocess.run(cmd, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def accelerate_cmd(job: Path, n: int = 2) -> list[str]:
    return [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--no_python", str(Path(PY).parent / "hdpo-tune"),
            "run", str(job)]


def audited(out: str, tmp: Path) -> list[str]:
    """Writes by ranks > 0 into the test's folders (job, run folder, caches) or anywhere outside the system
    temp dir. Library scratch in the temp dir (torch's inductor cache dir, tempfile probes) is allowed."""
    scratch = Path(tempfile.gettempdir()).resolve()
    bad = []
    for line in out.splitlines():
        if line.startswith("HDPO-AUDIT"):
            path = Path(line.split(" ", 3)[3]).resolve()
            if tmp.resolve() in (path, *path.parents) or scratch not in path.parents:
                bad.append(line)
    return bad


def tree(run: Path) -> list[str]:
    """Files under a run folder, tensorboard event names normalised (they hold host, pid and time)."""
    names = []
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        names.append("tensorboard/events" if rel.startswith("tensorboard/events.") else rel)
    return names


def test_launch_command_line_per_backend(tmp_path, tiny_model_dir, tiny_pairs):
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, lora=True)
    spec = yaml.safe_load(job.read_text())
    expected = {"ddp": "ddp.yaml", "fsdp": "fsdp2.yaml", "deepspeed": "zero3.yaml"}
    for backend, config in expected.items():
        job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": backend, "num_processes": 8}}))
        cmd = build_command(job)
        assert cmd[:3] == [PY, "-m", "accelerate.commands.launch"]
        assert cmd[cmd.index("--config_file") + 1] == str(ROOT / "deploy" / "accelerate" / config)
        assert cmd[cmd.index("--num_processes") + 1] == "8"
        assert cmd[cmd.index("--mixed_precision") + 1] == "no"
        assert cmd[-2:] == ["run", str(job)] and "--no_python" in cmd
        assert build_command(job, num_processes=2)[cmd.index("--num_processes") + 1] == "2"
    job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": "fsdp", "num_processes": 16, "num_machines": 2}}))
    cmd = build_command(job)
    assert cmd[cmd.index("--config_file") + 1].endswith("multi_node.yaml") and "--num_machines" in cmd
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": "ddp", "accelerate_config": "mine.yaml"}}))
    assert build_command(job)[build_command(job).index("--config_file") + 1] == str(own)
    job.write_text(yaml.safe_dump(spec))  # backend none, 1 process: no config file, a single process
    assert "--config_file" not in build_command(job)
    cpu = build_command(job, num_processes=2, cpu=True)
    assert "--multi_gpu" in cpu and "--config_file" not in cpu and launch_env(True) == {"ACCELERATE_USE_CPU": "1"}
    job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": "fsdp"}}))
    res = CliRunner().invoke(app, ["launch", str(job), "--cpu", "--dry-run"])
    assert res.exit_code == 2 and "needs GPUs" in res.output
    job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": "ddp", "num_processes": 4}}))
    res = CliRunner().invoke(app, ["launch", str(job), "--dry-run"])
    assert res.exit_code == 0 and "ddp.yaml --num_processes 4" in res.output
    job.write_text(yaml.safe_dump({**spec, "distributed": {"backend": "mpi"}}))
    assert CliRunner().invoke(app, ["launch", str(job), "--dry-run"]).exit_code == 2


@pytest.mark.e2e  # a 2-process launch
def test_lora_two_processes_match_one_and_only_rank0_writes(tmp_path, tiny_model_dir, tiny_pairs):
    """`hdpo-tune launch --cpu --num-processes 2` (accelerate -> torchrun, gloo) against one process."""
    one = write_job(tmp_path / "one", tiny_model_dir, tiny_pairs, lora=True)
    two = write_job(tmp_path / "two", tiny_model_dir, tiny_pairs, lora=True)
    run_one_process(one)
    out = launched([str(Path(PY).parent / "hdpo-tune"), "launch", str(two), "--cpu", "--num-processes", "2"])
    assert "ACCELERATE_USE_CPU=1" in out and "--multi_gpu --num_processes 2" in out
    a, b = losses(tmp_path / "one" / "run"), losses(tmp_path / "two" / "run")
    assert len(a) == len(b) == 4
    print("LoRA 1 vs 2 processes, max |loss diff| per step:", float((a - b).abs().max()))
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert tree(tmp_path / "two" / "run") == tree(tmp_path / "one" / "run")
    assert audited(out, tmp_path) == [], audited(out, tmp_path)[:10]
    wa = load_file(str(tmp_path / "one" / "run" / "final" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "run" / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)


@pytest.mark.e2e  # a 2-process launch
def test_full_finetune_two_processes_with_sharded_ref_precompute(tmp_path, tiny_model_dir, tiny_pairs):
    """Full fine-tuning under `accelerate launch` with the reference log-probs scored in shards over 2 ranks."""
    one = write_job(tmp_path / "one", tiny_model_dir, tiny_pairs, lora=False, precompute_ref_logps=True,
                    ref_cache_dir=str(tmp_path / "cache1"))
    two = write_job(tmp_path / "two", tiny_model_dir, tiny_pairs, lora=False, precompute_ref_logps=True,
                    ref_cache_dir=str(tmp_path / "cache2"))
    run_one_process(one)
    out = launched(accelerate_cmd(two), {"ACCELERATE_USE_CPU": "1"})
    assert audited(out, tmp_path) == [], audited(out, tmp_path)[:10]
    assert out.count("reference log-probs: computed and cached") == 1  # printed (and written) by rank 0 only
    a, b = losses(tmp_path / "one" / "run"), losses(tmp_path / "two" / "run")
    print("full FT 1 vs 2 processes, max |loss diff| per step:", float((a - b).abs().max()))
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    (c1,), (c2,) = list((tmp_path / "cache1").iterdir()), list((tmp_path / "cache2").iterdir())
    assert c1.name == c2.name
    t1, t2 = load_file(str(c1)), load_file(str(c2))
    # the same micro-batches, scored on different ranks: equal within float noise (not bitwise: another process
    # may pick other kernels or thread splits on another processor), token counts exactly
    torch.testing.assert_close(t2["logps"], t1["logps"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(t2["entropy_sum"], t1["entropy_sum"], atol=1e-3, rtol=1e-5)
    assert torch.equal(t1["token_counts"], t2["token_counts"])
    assert t1["logps"].shape == (16, 2)
    assert tree(tmp_path / "two" / "run") == tree(tmp_path / "one" / "run")


@pytest.mark.slow  # two launches (~60 s on 2 shared cores)
def test_two_process_run_killed_and_resumed_under_torchrun_continues_the_trajectory(tmp_path, tiny_model_dir,
                                                                                    tiny_pairs):
    """SIGKILL the whole `accelerate launch` process group after the step-2 checkpoint, resume with
    `torchrun --nproc_per_node 2`: the losses equal an uninterrupted single-process run."""
    straight = write_job(tmp_path / "straight", tiny_model_dir, tiny_pairs, lora=True, steps=6, scheduler="constant")
    job = write_job(tmp_path / "killed", tiny_model_dir, tiny_pairs, lora=True, steps=6, scheduler="constant")
    run_one_process(straight)
    proc = subprocess.Popen(accelerate_cmd(job), env=env(ACCELERATE_USE_CPU="1", HDPO_STALL_AT_STEP="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "HDPO-STALLED" in line or time.monotonic() > deadline:
                break
    finally:
        # torch's elastic agent starts each worker in a session of its own, so killing the launcher's process
        # group alone would leave the workers running (and holding the run folder's lock): kill every descendant
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
        proc.wait(timeout=30)
        psutil.wait_procs(workers, timeout=30)
    assert any("HDPO-STALLED" in s for s in seen), "".join(seen)[-3000:]
    run = tmp_path / "killed" / "run"
    assert (run / "checkpoints" / "step-00000002" / "state.json").exists() and not (run / "final").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "running"  # killed: nobody wrote more
    out = launched([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python",
                    str(Path(PY).parent / "hdpo-tune"), "run", str(job)])
    assert "resuming from step-00000002" in out and audited(out, tmp_path) == []
    a, b = losses(tmp_path / "straight" / "run"), losses(run)
    assert len(b) == 6
    print("kill/resume (2 processes) vs straight (1 process), max |loss diff|:", float((a - b).abs().max()))
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert json.loads((run / "status.json").read_text())["state"] == "succeeded"
