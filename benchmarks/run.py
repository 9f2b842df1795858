"""Run a benchmark from its config: ``python -m benchmarks.run [--config benchmarks/configs/<name>.yaml]``.

See :mod:`benchmarks.runner` for what it does and :mod:`benchmarks.tables` for what it writes.
"""

from benchmarks.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
