"""Picks the EMBEDDING_BACKEND encoder. Its own module so that the backends
(`shared.embedding` for torch, `shared.embedding_onnx` for ONNX) never import each other."""

from __future__ import annotations

from shared.embedding import Embedder, model_path
from shared.embedding_onnx import OnnxEmbedder, onnx_cache_dir
from shared.settings import Settings


def load_embedder(settings: Settings, threads: int) -> Embedder:
    """The EMBEDDING_BACKEND embedder for the configured model, with `threads` intra-op threads.

    The ONNX backends build their graph into EMBEDDING_CACHE_DIR on first use
    (under a file lock) unless `sluice build-onnx` already put it there.
    """
    path = model_path(settings)
    backend = settings.embedding_backend
    if backend == "torch":
        return Embedder(path, threads=threads)
    return OnnxEmbedder(
        path, threads=threads, quantized=backend == "onnx-int8", cache_dir=onnx_cache_dir(settings),
    )
