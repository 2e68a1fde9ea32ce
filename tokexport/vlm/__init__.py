"""Visual-token reduction for vision-language models (LLaVA-1.5 / LLaVA-NeXT): selectors and the exported graph.

Importing the package registers every visual-token method in ``tokexport.vlm.select.VISUAL_METHODS``:
the significance-based selectors and constant baselines of ``select``, and one module per further method."""
from . import cdpruner, dart, divprune, select, visionzip  # noqa: F401  (registration)
