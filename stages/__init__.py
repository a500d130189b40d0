"""The pipeline's steps, each with ``run(config) -> result``, and the helpers only they use.

Metrics are :mod:`bevkd.eval`, figures :mod:`bevkd.viz`; ``tests/test_layering.py`` lists the
steps and their helpers, and fails on any other module here.
"""
