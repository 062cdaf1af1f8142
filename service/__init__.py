"""service: job spec, CLI and stage pipeline around hdpo_core."""
