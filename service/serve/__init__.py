"""`hdpo-tune serve`: a self-hosted fine-tuning jobs service that speaks OpenAI's fine-tuning API.

The server never trains in its own process. Each job is a separate ``hdpo-tune run job.yaml`` process (the
same pipeline as the CLI) in its own run folder under the data folder; the server only writes the job spec,
starts and signals the process (:mod:`.executor`), and reads what the pipeline writes. So the server stays
decoupled from how stages are organised inside the pipeline. What it relies on, and nothing more:

* ``service.spec.job``: ``JobSpec``/``load_spec`` (to check a spec with the CLI's messages) and the list of path
  fields ``load_spec`` resolves (a test keeps :data:`.jobspec.PATH_FIELDS` equal to it);
* the run folder: ``status.json`` (``stage``, ``state``, ``total_steps``, ``error``, ``stages_done``),
  ``metrics.jsonl`` (one object per logged step with ``step``, ``loss``, ``tokens``...),
  ``checkpoints/step-NNNNNNNN/state.json``, ``final/``, ``merged/``, ``onnx/``, ``eval/``;
* ``hdpo-tune run``: exit code 0 / 2 (bad input) / 1 / 130 (interrupted after a checkpoint), SIGTERM =
  checkpoint and stop, and rerunning the same folder resumes and skips finished stages;
* ``hdpo_core.data.iter_raw_rows`` / ``normalise_row`` to check uploads row by row as the pipeline will read
  them (:func:`.datafile.scan_rows`; a test keeps its verdicts equal to ``load_preference_rows``).

A key holder is not the administrator: :mod:`.limits` bounds what one job may cost, :mod:`.jobspec` refuses
the fields that weaken isolation or leave the data folder, and :mod:`.store` holds every database read and write (the polled status routes' too).

Nothing here is imported by the rest of the CLI unless ``serve`` is invoked (FastAPI, SQLAlchemy and uvicorn
load lazily).
"""
