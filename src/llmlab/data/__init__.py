"""Data collection and preprocessing (survey §4.1): corpora, tokenizers, packing."""
