"""Visual-token reduction for vision-language models (LLaVA-1.5 / LLaVA-NeXT): selectors and the exported graph.

Importing the package registers every visual-token method in ``tokexport.vlm.select.VISUAL_METHODS``:
the significance-based selectors and constant baselines of ``select``, and one module per further method
(every module of the package is imported, so a new method needs no list to be extended)."""

from tokexport.registry import import_submodules

# a new visual-token method is one new module here; the graph and the LLaVA loader are infrastructure (torch)
INFRASTRUCTURE = ("graph", "llava")
import_submodules(__name__, skip=INFRASTRUCTURE)
