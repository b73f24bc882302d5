"""Examples that run with the project: a user's own aggregation rule, an in-process federation.

A regular package on purpose: opacus installs a top-level `examples` package into site-packages, which
would otherwise shadow this folder.
"""
