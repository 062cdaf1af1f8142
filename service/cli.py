"""The `hdpo-tune` command line: a thin Typer layer over service.stages.pipeline.

Each command parses its arguments, calls one pipeline function, and maps the domain error
(:class:`hdpo_core.errors.HdpoError`) to one line on stderr and an exit code: 2 bad input, 1 failure while
running, 130 interrupted. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hdpo_core import __version__
from service.cli_guard import STATE, guarded

app = typer.Typer(
    name="hdpo-tune",
    help="Align causal LMs with H-DPO (entropy-controllable DPO): train, evaluate, merge, export ONNX, push.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        typer.echo(f"hdpo-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    STATE["debug"] = debug


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="Job spec YAML.")],
    force: Annotated[bool, typer.Option("--force", help="Redo finished stages; ignore a different job's run folder.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these stages (repeatable).")] = None,
) -> None:
    """Run every enabled stage of a job: train, eval, merge, export, push."""
    from service.stages.pipeline import run_job

    guarded(lambda: run_job(job, force=force, only=tuple(only or ())))


@app.command()
def launch(
    job: Annotated[Path, typer.Argument(help="Job spec YAML.")],
    num_processes: Annotated[int | None, typer.Option("--num-processes", help="Processes in total (default: distributed.num_processes).")] = None,
    config_file: Annotated[Path | None, typer.Option("--config-file", help="accelerate config file (default: the backend's in deploy/accelerate/).")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="DDP over gloo on the CPU.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the accelerate launch command only.")] = False,
) -> None:
    """Run the job on several processes: builds, prints and runs `accelerate launch ... hdpo-tune run JOB`."""
    from service.launch import launch as launch_job

    guarded(lambda: launch_job(job, num_processes=num_processes, config_file=config_file, cpu=cpu,
                               dry_run=dry_run, log=typer.echo))


@app.command()
def validate(job: Annotated[Path, typer.Argument(help="Job spec YAML.")]) -> None:
    """Check the spec, model, tokenizer, data and run folder without training; list every problem (exit 2)."""
    from service.validate.job import run_validate

    raise typer.Exit(guarded(lambda: run_validate(job)))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the job spec."""
    import json

    from service.spec.job import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example job spec.")] = Path("job.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write an annotated example job spec (every field, its default and what it does)."""
    from service.spec.template import write_example_spec

    written = guarded(lambda: write_example_spec(path, force=force))
    typer.echo(f"wrote {written}; edit model.name_or_path, data.train and output.dir, then `hdpo-tune validate {written}`")


@app.command()
def merge(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (holds job.resolved.yaml and final/).")],
    force: Annotated[bool, typer.Option("--force", help="Redo the merge even if merged/ is up to date.")] = False,
) -> None:
    """Merge the LoRA adapter into the base (float32, checked) and write RUN/merged/ with a model card."""
    from service.stages.pipeline import run_folder_stage

    guarded(lambda: run_folder_stage(run_dir, "merge", force=force))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (merged first if needed).")],
    force: Annotated[bool, typer.Option("--force", help="Re-export even if onnx/ is current and validated.")] = False,
) -> None:
    """Export RUN/merged/ to ONNX with KV cache in RUN/onnx/ and validate it against PyTorch."""
    from service.stages.pipeline import run_folder_stage

    guarded(lambda: run_folder_stage(run_dir, "export", force=force))


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with merged/ (and onnx/).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; upload nothing.")] = False,
) -> None:
    """Push RUN/merged/ (and RUN/onnx/ under onnx/) to hub.repo_id. Token from HF_TOKEN only."""
    if dry_run:
        from service.runfolder import ownership
        from service.stages.ship import push_run

        def listing() -> object:  # reads only, but never through a link inside the run folder
            ownership.check_entries(ownership.check_location(run_dir, "RUN_DIR"), "RUN_DIR")
            return push_run(run_dir, dry_run=True, log=typer.echo)

        guarded(listing)
        return
    from service.stages.pipeline import run_folder_stage

    guarded(lambda: run_folder_stage(run_dir, "push", force=False))


@app.command()
def generate(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX folder written by `hdpo-tune export`.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt text.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed.")] = None,
) -> None:
    """Generate with onnxruntime alone (no torch import): the serving check."""
    from service.stages.ship import generate_onnx

    text = guarded(lambda: generate_onnx(onnx, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed))
    typer.echo(text)


@app.command("eval")
def eval_(
    target: Annotated[str, typer.Argument(help="Model, adapter, ONNX export or run folder.")],
    job: Annotated[Path | None, typer.Option("--job", help="Job YAML whose eval: section to use.")] = None,
    tasks: Annotated[str | None, typer.Option("--tasks", help="Task file (JSONL).")] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Reference (base) model folder.")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Output folder (default RUN/eval).")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Samples per prompt.")] = None,
    temperatures: Annotated[str | None, typer.Option("--temperatures", help="e.g. 0.25,0.5,1.0")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Tokens per sample.")] = None,
    verifier: Annotated[str | None, typer.Option("--verifier", help="math | math_verify | code | exact | regex | choice | ifeval")] = None,
    eval_pairs: Annotated[str | None, typer.Option("--eval-pairs", help="Held-out preference pairs (TRL format).")] = None,
    reference: Annotated[bool | None, typer.Option("--reference/--no-reference",
                                                   help="Also sample the reference model (default: the job's eval.compare_reference).")] = None,
    lm_eval: Annotated[str | None, typer.Option("--lm-eval", help="lm-evaluation-harness tasks, e.g. gsm8k,ifeval.")] = None,
    lm_eval_include: Annotated[str | None, typer.Option("--lm-eval-include", help="Folder of custom lm-eval task YAMLs.")] = None,
    lm_eval_limit: Annotated[float | None, typer.Option("--lm-eval-limit", help="lm-eval documents per task (count or fraction).")] = None,
) -> None:
    """Evaluate a model: accuracy and pass@k per temperature, diversity, entropy, preference metrics, lm-eval."""
    from service.stages.eval import evaluate_cli

    harness = {"tasks": lm_eval.split(",") if lm_eval else None, "include_path": lm_eval_include, "limit": lm_eval_limit}
    guarded(lambda: evaluate_cli(target, job=job, tasks=tasks, ref=ref, out=out, n=n, temperatures=temperatures,
                                 top_p=top_p, seed=seed, max_new_tokens=max_new_tokens, verifier=verifier,
                                 eval_pairs=eval_pairs, compare_reference=reference, lm_eval=harness, log=typer.echo))


@app.command()
def compare(
    run_dirs: Annotated[list[str], typer.Argument(help="Run folders with eval/results.json.")],
    out: Annotated[str | None, typer.Option("--out", help="Output folder (default ./compare).")] = None,
) -> None:
    """Compare runs (e.g. an alpha sweep): pass@k, accuracy vs temperature, entropy vs alpha."""
    from service.stages.eval import compare_runs

    typer.echo(guarded(lambda: compare_runs(run_dirs, out=out)))


@app.command()
def sweep(
    job: Annotated[Path, typer.Argument(help="Job spec YAML (its eval section picks the winner).")],
    alpha: Annotated[str, typer.Option("--alpha", help="Comma-separated alphas, e.g. 0.8,0.9,1.0,1.1.")],
    select: Annotated[str, typer.Option("--select", help="accuracy@tT, pass@K[@tT], entropy~X, reward_accuracy "
                                        "or loss.")] = "accuracy@t1.0",
    force: Annotated[bool, typer.Option("--force", help="Redo finished variants.")] = False,
) -> None:
    """Train and evaluate one run per alpha (shared data and reference log-probs), pick the best, ship it."""
    from service.sweep import parse_alphas, run_sweep

    guarded(lambda: run_sweep(job, alphas=parse_alphas(alpha), select=select, force=force))


@app.command()
def ui(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, sweep folders, or folders holding them.")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 6007,
) -> None:
    """Open the web console, read-only, over local runs and sweeps (http://127.0.0.1:PORT/)."""
    from service.serve.console.ui import run_ui

    guarded(lambda: run_ui(paths, port))


from service.serve.cli import serve_app  # noqa: E402  (typer only; FastAPI loads when `serve` runs)

app.add_typer(serve_app, name="serve")


def _with_default_command(argv: list[str]) -> list[str]:
    """`hdpo-tune job.yaml` (the container's entrypoint form) means `hdpo-tune run job.yaml`."""
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is not None and args[first].endswith((".yaml", ".yml")):
        args.insert(first, "run")
    return args


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    if not sys.stderr.isatty():
        # logs (CI, Kubernetes, docker logs) get no carriage-return bars from transformers/huggingface_hub
        # ("Loading weights", downloads); our own training progress becomes periodic lines (hdpo_core.trainer)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = _with_default_command(sys.argv[1:] if argv is None else argv)
    return app(args=args, prog_name="hdpo-tune")


if __name__ == "__main__":  # `python -m service.cli ...` (also the launcher's fallback without the script)
    main()
