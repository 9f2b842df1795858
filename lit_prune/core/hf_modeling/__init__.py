"""The self-contained modelling file copied into every pruned model folder.

``modeling_lit_pruned.py`` imports only ``torch`` and ``transformers``, so that
``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where lit_prune is not installed.
Inside lit_prune it is imported as an ordinary module: compaction builds its modules with the very classes
that rebuild a saved model, so the two can never drift apart.
"""
