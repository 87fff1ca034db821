"""The benchmark harness: several full runs side by side, for the tables in docs/results.md.

Why its own package: ``pipeline`` runs one user's job (run, demo, suite); a benchmark orchestrates many such runs and
compares them, and the ``bench/`` scripts and ``comgen bench`` share this code.
"""
