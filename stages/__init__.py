"""One module per pipeline step, each with ``run(config) -> result``."""
