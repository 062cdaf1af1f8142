"""`hdpo-tune serve`: a self-hosted fine-tuning jobs service that speaks OpenAI's fine-tuning API.

The server never trains in its own process. Each job is a separate ``hdpo-tune run job.yaml`` process (the
same pipeline as the CLI) in its own run folder under the data folder; the server only writes the job spec,
starts and signals the process (:mod:`.executor`), and reads what the pipeline writes (``status.json``,
``metrics.jsonl``, ``checkpoints/``). So the server stays decoupled from how stages are organised inside the
pipeline: its contract is the run folder.

Nothing here is imported by the rest of the CLI unless ``serve`` is invoked (FastAPI, SQLAlchemy and uvicorn
load lazily).
"""
