"""Task-neutral stages of a conversion: metrics contract, runners over named inputs, the parity
comparator, side-by-side latency, environment and report schema. Nothing here knows which task
(ViT tokens, visual tokens, vocabulary trimming) it serves; tasks live in :mod:`tokexport.tasks`."""
