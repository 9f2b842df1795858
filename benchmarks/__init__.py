"""lit_prune's benchmarks: ``python -m benchmarks.run`` (the runner) and ``python -m benchmarks.latency``."""
