"""The run folder's one owner on the service side: its records (``status.json``), lock and ownership.

The names of everything in a run folder, and the checkpoint listing, are :mod:`hdpo_core.layout` (the core
writes some of them and never imports the service); this package adds what only the service does.
"""
