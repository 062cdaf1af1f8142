"""`hdpo-tune validate`: every problem of a job before any GPU time is spent."""
