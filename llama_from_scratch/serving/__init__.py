"""Chapter 15: serving many people at once.

* :mod:`.paged_kv_cache`: keys and values in 16-token blocks with per-sequence block tables, and prefix
  caching (full blocks named by the hash of everything up to them, shared with reference counts, evicted
  least recently used), after vLLM;
* :mod:`.paged_attention`: attention that reads keys and values through the block tables, for one step
  mixing many sequences (Orca's selective batching), swapped into a model from outside;
* :mod:`.sampling_params`: each request's own decoding settings;
* :mod:`.scheduler`: continuous batching (Orca's iteration-level scheduling) with preemption by recompute;
* :mod:`.engine`: the loop that ties them together, tokens in, text out.

The HTTP side (it needs the ``serve`` extra: FastAPI, uvicorn, prometheus_client), imported from its modules:

* :mod:`.engine_thread`: the engine stepping in a background thread, fed by the server's event loop;
* :mod:`.protocol`: the OpenAI API's request and response shapes and its error body;
* :mod:`.metrics`: Prometheus counters, gauges and latency histograms;
* :mod:`.middleware`: the request body limit (413) and responses counted by status, in front of the app;
* :mod:`.server`: the FastAPI app (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``,
  ``/metrics``, the chat page ``static/index.html`` at ``/``), its limits, and uvicorn with a clean SIGTERM.
"""

from .engine import LLMEngine, RequestOutput
from .paged_attention import StepBatch, paged_forward, use_paged_attention, use_plain_attention
from .paged_kv_cache import BLOCK_SIZE, BlockAllocator, NoFreeBlocks, PagedKVCache
from .sampling_params import SamplingParams
from .scheduler import Scheduler, Sequence

__all__ = [
    "BLOCK_SIZE",
    "BlockAllocator",
    "LLMEngine",
    "NoFreeBlocks",
    "PagedKVCache",
    "RequestOutput",
    "SamplingParams",
    "Scheduler",
    "Sequence",
    "StepBatch",
    "paged_forward",
    "use_paged_attention",
    "use_plain_attention",
]
