"""Vocabulary trimming for multilingual encoders and decoders (`task: vocab-trim`), checked exactly
against the original: corpus mining, tokenizer and model surgery, static ONNX export, verification."""
