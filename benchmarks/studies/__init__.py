"""One-off investigations (scripts, not tests): each writes its results to benchmarks/results/."""
