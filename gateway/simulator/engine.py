"""A model of what a vLLM engine does with its GPU time, for the simulator (off unless asked for).

What it models, after vLLM V1's scheduler and KV-cache manager:

- **Paged KV cache with automatic prefix caching.** The cache holds `num_blocks` blocks of `block_size`
  tokens (`--kv-cache-tokens` / `--block-size`). A request's tokens are cut into blocks; a *full* block
  is named by a hash chained over every token before it (`hash(parent_hash, block_tokens)`), so a block
  can only be shared by requests with the same whole prefix. A new request reuses the longest run of
  cached blocks from its start (at most `num_tokens - 1` tokens: the last token is always computed, to
  have logits). Blocks nobody uses stay cached in a free queue and are evicted least recently used
  first; a request's blocks are freed tail first, so the shared head of a prompt outlives its tail.
  Full blocks made during decode are cached too, so the next turn of a conversation, whose prompt
  is this turn's prompt plus the answer, finds the answer in the cache. A chat prompt as the engine
  sees it ends with the assistant's header (the 3 tokens `tokens.chat_ids` gives every message): the
  simulator's documented `prompt_tokens` do not count them, as they do not count vLLM's generation
  prompt.
- **Continuous batching.** Every engine step first gives each running request its next tokens (one
  for a decode, a chunk of the rest for a prefill) and then admits waiting requests in arrival order
  while fewer than `max_num_seqs` run, the step's token budget (`max_num_batched_tokens`, chunked
  prefill) lasts and their blocks fit; a running request that needs a block when none is free
  preempts the most recently admitted one (its blocks are freed; it is recomputed later).
- **Time.** A step takes `(1 + F * (decodes - 1)) / decode_tps + prefill_tokens / prefill_tps`
  seconds (F = `batch_slowdown`): `decode_tps` tokens/s per sequence at batch 1, each extra sequence
  in the batch adds F of a batch-1 step. Time to first token is therefore the wait in the queue plus
  the prefill of the prompt tokens the cache did not have (plus the steps shared with other requests).

`EngineCore` is the pure state machine (no asyncio, time passed in: unit tests drive it with their own
clock); `SimEngine` runs it on the event loop, sleeping for each step's duration, and serves the
simulator's requests (`admit`) and vLLM's engine series on `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.simulator import tokens

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
ROOT_HASH = 0x5EED_CAFE  # parent of a prompt's first block
GENERATION_HEADER = 3  # tokens of the assistant header that ends a chat prompt as the engine sees it


@dataclass(frozen=True, slots=True)
class EngineParams:
    """The engine's shape and speed (CLI flags of the simulator)."""

    prefill_tps: float = 8000.0  # prompt tokens computed per second
    decode_tps: float = 50.0  # tokens per second of one sequence at batch 1
    batch_slowdown: float = 0.02  # F: each extra sequence in a step adds F of a batch-1 step
    block_size: int = 16  # tokens per KV block (vLLM on GPU: 16; the CPU build: 128)
    num_blocks: int = 4096  # KV cache capacity in blocks
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192  # tokens per step (chunked prefill)
    prefix_caching: bool = True

    def step_time(self, decodes: int, prefill_tokens: int) -> float:
        batch = 1.0 + self.batch_slowdown * max(0, decodes - 1)
        return batch / self.decode_tps + prefill_tokens / self.prefill_tps

    def validate(self) -> None:
        for name in ("prefill_tps", "decode_tps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.batch_slowdown < 0:
            raise ValueError("batch_slowdown must be >= 0")
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


# -- token ids -----------------------------------------------------------------------------------------

_word_id = functools.lru_cache(maxsize=1 << 17)(tokens.word_id)


def _text_ids(text: str) -> list[int]:
    return [_word_id(w) for w in text.split()]


def chat_ids(messages: Sequence[Any]) -> list[int]:
    """`tokens.chat_ids` (same ids) with memoised word ids, plus the assistant header that follows."""
    ids: list[int] = []
    start, end = tokens.SPECIAL_IDS[0], tokens.SPECIAL_IDS[2]
    for message in messages:
        ids += (start, _word_id(str(message.get("role"))), end)
        ids += _text_ids(tokens.content_text(message.get("content")))
    ids += (start, _word_id("assistant"), end)
    return ids


def prompt_ids(kind: str, body: Any, prompt: tokens.Prompt) -> list[int]:
    """The token ids the engine computes for a request's prompt."""
    if prompt.ids:
        return list(prompt.ids)
    if isinstance(body, dict):
        if kind == "chat" and isinstance(body.get("messages"), list):
            return chat_ids(body["messages"])
        value = body.get("prompt")
        if isinstance(value, str):
            return _text_ids(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return _text_ids(" ".join(value))
    return [tokens.SPECIAL_IDS[1]] * max(1, prompt.tokens)  # unknown shape: a prompt shared by nobody


def output_ids(prompt: tokens.Prompt, n: int) -> list[int]:
    return [_word_id(t[1:]) for t in tokens.generate(prompt, n)]


# -- the KV cache ----------------------------------------------------------------------------------------


class BlockPool:
    """`num_blocks` KV blocks: reference counts, the prefix-cache index (hash -> block) and the free queue.

    The free queue holds every block with no reference, least recently freed first; a free block keeps
    its hash (and stays findable) until it is taken for new tokens. Blocks without a hash go to the
    front of the queue (reused first), cached ones to the back (evicted last), as vLLM does."""

    def __init__(self, num_blocks: int, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[int, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: the share of blocks some request holds."""
        return 1.0 - len(self.free) / self.num_blocks

    def longest_hit(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Cached blocks for the longest run of `hashes` from the start (at most max_blocks)."""
        if not self.caching:
            return []
        hit: list[int] = []
        cached = self.cached
        for h in hashes[:max_blocks]:
            b = cached.get(h)
            if b is None:
                break
            hit.append(b)
        return hit

    def touch(self, blocks: Iterable[int]) -> None:
        """Take a reference on cached blocks (they leave the free queue while used)."""
        for b in blocks:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """n blocks from the head of the free queue (the caller checked num_free); their old hashes go."""
        out: list[int] = []
        for _ in range(n):
            b, _ = self.free.popitem(last=False)
            h = self.hash_of[b]
            if h is not None:
                if self.cached.get(h) == b:
                    del self.cached[h]
                self.hash_of[b] = None
                self.evictions += 1
            self.ref[b] = 1
            out.append(b)
        return out

    def cache(self, block: int, h: int) -> None:
        """A block just became full: findable under its hash (the first block with a hash keeps it)."""
        if self.caching and self.hash_of[block] is None and h not in self.cached:
            self.cached[h] = block
            self.hash_of[block] = h

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a request's references, tail first (so its head is evicted last)."""
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
                if self.hash_of[b] is None:
                    self.free.move_to_end(b, last=False)


# -- requests and the scheduler -------------------------------------------------------------------------


class Seq:
    """One request inside the engine."""

    __slots__ = ("id", "model", "ids", "num_prompt", "reported_prompt", "max_tokens", "hashes", "blocks",
                 "cached_blocks", "computed", "generated", "hit_tokens", "state", "arrived", "scheduled_at",
                 "first_token_at", "last_token_at", "finished_at", "preemptions", "data")

    def __init__(self, seq_id: int, model: str, prompt: list[int], out: list[int], reported_prompt: int,
                 now: float) -> None:
        self.id = seq_id
        self.model = model
        self.ids = prompt + out  # every token the request will have (outputs are deterministic)
        self.num_prompt = len(prompt)
        self.reported_prompt = reported_prompt  # usage.prompt_tokens
        self.max_tokens = len(out)
        self.hashes: list[int] = []  # chained hashes of the full blocks of ids, computed as needed
        self.blocks: list[int] = []
        self.cached_blocks = 0  # how many of `blocks` are registered in the prefix cache
        self.computed = 0  # tokens whose KV is in `blocks`
        self.generated = 0
        self.hit_tokens = -1  # prompt tokens found in the prefix cache when first scheduled
        self.state = WAITING
        self.arrived = now
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finished_at: float | None = None
        self.preemptions = 0
        self.data: Any = None  # the simulator's: an asyncio.Event set when the request makes progress

    @property
    def num_tokens(self) -> int:
        return self.num_prompt + self.generated

    @property
    def done(self) -> bool:
        return self.state == FINISHED

    @property
    def cached_tokens(self) -> int:
        """usage.prompt_tokens_details.cached_tokens (never more than the prompt tokens reported)."""
        return max(0, min(self.hit_tokens, self.reported_prompt))

    def block_hashes(self, n: int, block_size: int) -> list[int]:
        """Hashes of the first n full blocks."""
        hashes = self.hashes
        ids = self.ids
        while len(hashes) < n:
            i = len(hashes)
            parent = hashes[-1] if hashes else ROOT_HASH
            hashes.append(hash((parent, tuple(ids[i * block_size:(i + 1) * block_size]))))
        return hashes


@dataclass(slots=True)
class Step:
    """What one engine step computes: (request, new tokens) pairs, and how long it takes."""

    work: list[tuple[Seq, int]]
    duration: float
    prefill_tokens: int
    decodes: int


@dataclass(slots=True)
class EngineStats:
    """Counters since start (vLLM's prefix-cache stats count tokens)."""

    prefix_queries: int = 0  # prompt tokens of requests looked up in the prefix cache
    prefix_hits: int = 0  # of those, tokens found cached
    preemptions: int = 0
    steps: int = 0
    busy_seconds: float = 0.0  # time spent in steps
    prompt_tokens_computed: int = 0
    generated_tokens: int = 0


class EngineEvents:
    """What the engine reports as it goes (the simulator turns it into vLLM's metrics); no-ops here."""

    def scheduled(self, seq: Seq, now: float) -> None:
        """First admission of a request: its prefix-cache lookup is done (seq.hit_tokens)."""

    def preempted(self, seq: Seq) -> None: ...

    def step(self, step: Step) -> None: ...

    def finished(self, seq: Seq) -> None: ...


class EngineCore:
    """vLLM's scheduler and KV-cache manager as a state machine: `add`, `schedule`, `complete`, `abort`."""

    def __init__(self, params: EngineParams, events: EngineEvents | None = None) -> None:
        params.validate()
        self.params = params
        self.pool = BlockPool(params.num_blocks, params.prefix_caching)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.stats = EngineStats()
        self.events = events or EngineEvents()
        self._next_id = 0

    # -- requests --------------------------------------------------------------------------------------
    def max_tokens_for(self, num_prompt: int) -> int:
        return self.params.num_blocks * self.params.block_size - num_prompt

    def add(self, model: str, prompt: list[int], out: list[int], now: float, reported_prompt: int | None = None
            ) -> Seq:
        """Queue a request; raises ValueError when it could never fit in the whole KV cache."""
        if len(prompt) + len(out) > self.params.num_blocks * self.params.block_size:
            raise ValueError(f"the request needs {len(prompt) + len(out)} tokens of KV cache; the engine has "
                             f"{self.params.num_blocks * self.params.block_size}")
        self._next_id += 1
        seq = Seq(self._next_id, model, prompt, out,
                  len(prompt) if reported_prompt is None else reported_prompt, now)
        if seq.max_tokens == 0:  # nothing to generate (a prompt only): done at once
            seq.state = FINISHED
            seq.finished_at = now
            return seq
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Seq, now: float) -> None:
        """The client went away: free the request's blocks and forget it."""
        if seq.state == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        elif seq.state == RUNNING:
            self.running.remove(seq)
            self.pool.release(seq.blocks)
            seq.blocks = []
        if seq.state != FINISHED:
            seq.state = FINISHED
            seq.finished_at = now

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(running, waiting) by served model name."""
        out: dict[str, tuple[int, int]] = {}
        for s in self.running:
            r, w = out.get(s.model, (0, 0))
            out[s.model] = (r + 1, w)
        for s in self.waiting:
            r, w = out.get(s.model, (0, 0))
            out[s.model] = (r, w + 1)
        return out

    # -- one step ----------------------------------------------------------------------------------------
    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.params.block_size)

    def _preempt(self, seq: Seq) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.cached_blocks = 0
        seq.computed = 0
        seq.state = WAITING
        seq.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)
        self.events.preempted(seq)

    def schedule(self, now: float) -> Step:
        """Pick this step's work (running requests first, then waiting ones in arrival order)."""
        p = self.params
        pool = self.pool
        budget = p.max_num_batched_tokens
        work: list[tuple[Seq, int]] = []
        running = self.running
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.num_tokens - seq.computed, budget)
            need = self._blocks_for(seq.computed + n) - len(seq.blocks)
            while need > pool.num_free:
                victim = running.pop()  # the most recently admitted request gives its blocks back
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.state != RUNNING:
                break
            if need > 0:
                seq.blocks += pool.allocate(need)
            work.append((seq, n))
            budget -= n
            i += 1
        while not preempted and self.waiting and budget > 0 and len(running) < p.max_num_seqs:
            seq = self.waiting[0]
            bs = p.block_size
            full = (seq.num_tokens - 1) // bs
            hit = pool.longest_hit(seq.block_hashes(full, bs), full) if p.prefix_caching else []
            hit_tokens = len(hit) * bs
            n = min(seq.num_tokens - hit_tokens, budget)
            need = self._blocks_for(hit_tokens + n) - len(hit)
            reclaimable = sum(1 for b in hit if pool.ref[b] == 0)  # cached but free: taking them uses them up
            if need > pool.num_free - reclaimable:
                break
            self.waiting.popleft()
            pool.touch(hit)
            seq.blocks = hit + pool.allocate(need)
            seq.cached_blocks = len(hit)
            seq.computed = hit_tokens
            seq.state = RUNNING
            if seq.hit_tokens < 0:  # vLLM counts a request's lookup once (not again after a preemption)
                seq.hit_tokens = hit_tokens
                seq.scheduled_at = now
                self.stats.prefix_queries += seq.num_tokens
                self.stats.prefix_hits += hit_tokens
                self.events.scheduled(seq, now)
            running.append(seq)
            work.append((seq, n))
            budget -= n
        decodes = sum(1 for seq, n in work if seq.computed >= seq.num_prompt and n == 1)
        prefill = sum(n for seq, n in work) - decodes
        duration = p.step_time(decodes, prefill) if work else 0.0
        return Step(work, duration, prefill, decodes)

    def complete(self, step: Step, now: float) -> list[Seq]:
        """Apply a finished step: KV computed, full blocks cached, a token sampled for each request whose
        prompt (and tokens so far) is now all computed. Returns the requests that made progress."""
        bs = self.params.block_size
        pool = self.pool
        progressed: list[Seq] = []
        self.stats.steps += 1
        self.stats.busy_seconds += step.duration
        for seq, n in step.work:
            if seq.state != RUNNING:  # aborted or preempted meanwhile
                continue
            was_prefill = seq.computed < seq.num_prompt
            seq.computed += n
            if was_prefill:
                self.stats.prompt_tokens_computed += min(n, seq.num_prompt - (seq.computed - n))
            full = seq.computed // bs
            if full > seq.cached_blocks:
                hashes = seq.block_hashes(full, bs)
                for j in range(seq.cached_blocks, full):
                    pool.cache(seq.blocks[j], hashes[j])
                seq.cached_blocks = full
            if seq.computed < seq.num_tokens:
                continue  # a chunk of a long prefill: no token yet
            seq.generated += 1
            self.stats.generated_tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
            seq.last_token_at = now
            progressed.append(seq)
            if seq.generated >= seq.max_tokens:
                self.running.remove(seq)
                pool.release(seq.blocks)
                seq.blocks = []
                seq.state = FINISHED
                seq.finished_at = now
                self.events.finished(seq)
        self.events.step(step)
        return progressed

    def run_until_idle(self, clock: list[float], max_steps: int = 1_000_000) -> None:
        """Drive the engine without an event loop: clock[0] advances by each step's duration (tests)."""
        for _ in range(max_steps):
            if not self.has_work():
                return
            step = self.schedule(clock[0])
            if not step.work:
                raise RuntimeError("engine stalled: waiting requests that cannot be scheduled")
            clock[0] += step.duration
            self.complete(step, clock[0])
        raise RuntimeError("engine did not become idle")


# -- on the event loop, with vLLM's metrics --------------------------------------------------------------

REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
LATE_LIMIT = 0.05  # seconds the engine's timeline may run ahead of the event loop
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class EngineMetrics:
    """vLLM's engine series (label `model_name`), registered in the simulator's registry."""

    def __init__(self, registry: CollectorRegistry, params: EngineParams, models: Sequence[str]) -> None:
        labels = ["model_name"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.queries = counter("vllm:prefix_cache_queries",
                               "Prefix cache queries, in terms of number of queried tokens.")
        self.hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.",
                                      REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.",
                                        REQUEST_LATENCY_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                              TPOT_BUCKETS)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", ITERATION_BUCKETS)
        info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                     ["block_size", "num_gpu_blocks", "enable_prefix_caching", "cache_dtype"], registry=registry)
        info.labels(str(params.block_size), str(params.num_blocks), str(params.prefix_caching), "auto").set(1)
        for m in models:  # every series exists from the start, at zero
            for c in (self.queries, self.hits, self.preemptions):
                c.labels(m)
            for h in (self.queue_time, self.prefill_time, self.decode_time, self.inference_time, self.tpot,
                      self.iteration_tokens):
                h.labels(m)


class SimEngine(EngineEvents):
    """The engine on the simulator's event loop: a task runs steps back to back while there is work."""

    def __init__(self, params: EngineParams, registry: CollectorRegistry, models: Sequence[str]) -> None:
        self.core = EngineCore(params, self)
        self.params = params
        self.models = tuple(models)
        self.metrics = EngineMetrics(registry, params, models)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def _model(self, name: str) -> str:
        return name if name in self.models else self.models[0]

    # -- requests --------------------------------------------------------------------------------------
    def add(self, model: str, prompt: list[int], out: list[int], reported_prompt: int) -> Seq:
        loop = asyncio.get_running_loop()
        seq = self.core.add(self._model(model), prompt, out, loop.time(), reported_prompt)
        seq.data = event = asyncio.Event()
        if seq.done:
            event.set()
        if self._wake is not None:
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="sim-engine")
        return seq

    def abort(self, seq: Seq) -> None:
        if not seq.done:
            self.core.abort(seq, asyncio.get_running_loop().time())
            seq.data.set()
            if self._wake is not None:
                self._wake.set()

    @staticmethod
    async def wait(seq: Seq, n: int) -> None:
        """Until the request has n tokens (or is over)."""
        event: asyncio.Event = seq.data
        while seq.generated < n and not seq.done:
            event.clear()
            await event.wait()

    @contextlib.asynccontextmanager
    async def admit(self, job: Any) -> AsyncIterator[Seq]:
        """The simulator's hook: queue a parsed request (`server.Job`) in the engine for the duration of
        the block (`job.seq`); its tokens are then awaited with `wait(seq, n)`."""
        load = job.load
        seq = self.add(job.model, prompt_ids(job.kind, job.body, job.prompt), output_ids(job.prompt, job.n),
                       job.prompt.tokens)
        job.seq = seq
        load.prompt_tokens.inc(job.prompt.tokens)
        try:
            yield seq
        except (asyncio.CancelledError, ConnectionResetError):
            load.success["abort"].inc()
            raise
        finally:
            if job.sent:
                load.generation_tokens.inc(job.sent)
            self.abort(seq)

    # -- the loop ----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Steps back to back on the engine's own timeline: a step starts when the previous one ended,
        so late wake-ups of this task (a busy CPU) do not slow the simulated GPU down unless they add
        up to more than LATE_LIMIT; the task ends when the engine is idle."""
        core = self.core
        loop = asyncio.get_running_loop()
        end = loop.time()
        while core.has_work():
            now = loop.time()
            start = max(end, now - LATE_LIMIT)
            step = core.schedule(start)
            if not step.work:  # nothing fits now: wait until a request comes or goes
                self._wake = asyncio.Event()
                await self._wake.wait()
                self._wake = None
                end = loop.time()
                continue
            end = start + step.duration
            await asyncio.sleep(max(0.0, end - loop.time()))
            for seq in core.complete(step, end):
                seq.data.set()

    # -- events: vLLM's series -------------------------------------------------------------------------
    def scheduled(self, seq: Seq, now: float) -> None:
        m = self.metrics
        m.queries.labels(seq.model).inc(seq.num_prompt)
        m.hits.labels(seq.model).inc(seq.hit_tokens)
        m.queue_time.labels(seq.model).observe(now - seq.arrived)

    def preempted(self, seq: Seq) -> None:
        self.metrics.preemptions.labels(seq.model).inc()

    def step(self, step: Step) -> None:
        per_model: dict[str, int] = {}
        for seq, n in step.work:
            per_model[seq.model] = per_model.get(seq.model, 0) + n
        for model, n in per_model.items():
            self.metrics.iteration_tokens.labels(model).observe(n)

    def finished(self, seq: Seq) -> None:
        m = self.metrics
        model = seq.model
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else seq.arrived
        first = seq.first_token_at if seq.first_token_at is not None else scheduled
        end = seq.finished_at if seq.finished_at is not None else first
        m.prefill_time.labels(model).observe(first - scheduled)
        m.decode_time.labels(model).observe(end - first)
        m.inference_time.labels(model).observe(end - scheduled)
        if seq.generated > 1:
            m.tpot.labels(model).observe((end - first) / (seq.generated - 1))

    # -- scrape-time values ------------------------------------------------------------------------------
    def kv_usage(self) -> float:
        return self.core.pool.usage()

    def counts(self) -> dict[str, tuple[int, int]]:
        return self.core.counts()

    def busy_seconds(self) -> float:
        return self.core.stats.busy_seconds
