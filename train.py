"""Run a lit_prune recipe: ``python train.py fit --config configs/<method>/<task>.yaml``."""

from lit_prune.cli import main

if __name__ == "__main__":
    main()
