"""Run a lit_prune recipe from a clone: ``python train.py fit --config configs/<method>/<task>.yaml``.

The same as the ``lit-prune`` console script that ``pip install`` puts on the PATH (``lit-prune fit --config
<method>/<task>``): both call :func:`lit_prune.cli.main`.
"""

from lit_prune.cli import main

if __name__ == "__main__":
    main()
