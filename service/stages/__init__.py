"""The stage pipeline of `hdpo-tune run` and each stage."""
