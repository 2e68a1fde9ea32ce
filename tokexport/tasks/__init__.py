"""Tasks: what differs between ViT token pruning, VLM visual tokens and vocabulary trimming. Each task
declares what to load, which pair of graphs to build, which metrics to compute and which report
sections it adds; :mod:`tokexport.tasks.run` owns the stage order for all of them."""
