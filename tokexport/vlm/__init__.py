"""Visual-token reduction for vision-language models (LLaVA-1.5 / LLaVA-NeXT): selectors and the exported graph."""
