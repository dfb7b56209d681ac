"""Sluice worker: pulls ingestion jobs, parses, chunks and embeds documents."""
