"""Run an exported sentence-transformers graph with onnxruntime: tokenize with the
model's own tokenizer.json, run, mean-pool, L2-normalise. No torch import.
(Building the graph lives in `shared.embedding_onnx`.)"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding


class OnnxRunner:
    """Tokenize with the model's tokenizer.json, run the graph, mean-pool, L2-normalise.

    Every run uses one thread; `run_each` embeds `lanes` texts at once, each alone, from
    a thread pool (onnxruntime releases the GIL, and one session serves concurrent runs).
    On a 2-core machine two one-thread lanes encoded 1.17x (fp32) and 1.12x (int8) the
    chunks/s of padded batches of 32 grouped by length on two intra-op threads, and it is
    what makes an int8 vector independent of its batch mates (`make bench-lanes`, README).
    """

    def __init__(self, model_dir: Path, graph: Path, *, lanes: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.max_seq_length, self.dim = model_facts(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and fixed padding: truncate at
        # max_seq_length as sentence-transformers does, and pad per batch ourselves
        # (`run`), so that `tokenize` reports each text's real length.
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.pad_id = int((self.tokenizer.padding or {}).get("pad_id", 0))
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        self.lanes = max(lanes, 1)
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._pool = ThreadPoolExecutor(self.lanes, "onnx-lane") if self.lanes > 1 else None

    def tokenize(self, texts: list[str]) -> list[Encoding]:
        """Token ids per text, truncated at max_seq_length, not padded."""
        encodings: list[Encoding] = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        return encodings

    def run(self, encodings: list[Encoding]) -> np.ndarray:
        """Embeddings of a batch of tokenized texts, padded to the batch's longest."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden: np.ndarray = self.session.run(
            None, {k: v for k, v in feeds.items() if k in self.inputs}
        )[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return out

    def run_each(self, encodings: list[Encoding]) -> np.ndarray:
        """Embeddings of tokenized texts, each run alone (no padding), across the lanes."""
        if self._pool is None or len(encodings) == 1:
            rows = [self.run([e])[0] for e in encodings]
        else:
            rows = list(self._pool.map(lambda e: self.run([e])[0], encodings))
        return np.stack(rows)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.run(self.tokenize(texts))


def model_facts(model_dir: Path) -> tuple[int, int]:
    """(max_seq_length, dim); refuses pipelines this runner does not reproduce."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = {m["type"].rsplit(".", 1)[-1] for m in modules}
    if not kinds <= {"Transformer", "Pooling", "Normalize"}:
        raise ValueError(
            f"the ONNX backends run Transformer + mean Pooling (+ Normalize); {model_dir} has "
            f"{sorted(kinds)}: use EMBEDDING_BACKEND=torch"
        )
    pooling_dir = next((m["path"] for m in modules if m["type"].endswith("Pooling")), "1_Pooling")
    pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
        v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
    ):
        raise ValueError(f"the ONNX backends do mean pooling only; {model_dir}: use EMBEDDING_BACKEND=torch")
    st_config = model_dir / "sentence_bert_config.json"
    max_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
    config = json.loads((model_dir / "config.json").read_text())
    max_len = int(max_len or config.get("max_position_embeddings", 512))
    return max_len, int(pooling.get("word_embedding_dimension") or config["hidden_size"])
