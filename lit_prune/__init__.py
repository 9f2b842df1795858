"""lit_prune: pruning pretrained encoder language models with PyTorch Lightning."""

__version__ = "0.1.0"
