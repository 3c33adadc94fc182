"""grantkeeper benchmarks: ratios measured side by side in one run (see benchmarks/README.md).

Run from the repository root: ``python -m benchmarks.run`` (all) or ``python -m benchmarks.run cached``.
"""
