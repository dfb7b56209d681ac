"""Worker pipeline steps (detect, parse in isolation, and later steps)."""
