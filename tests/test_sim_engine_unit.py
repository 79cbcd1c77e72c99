"""The simulator's engine model as a state machine: prefix cache, continuous batching and time, driven
by the test's own clock (no event loop, no sleeps)."""

from __future__ import annotations

import pytest

from gateway.simulator import tokens
from gateway.simulator.engine import (
    BlockPool,
    EngineCore,
    EngineParams,
    Seq,
    chat_ids,
    output_ids,
    prompt_ids,
)


def params(**kw: object) -> EngineParams:
    base: dict[str, object] = dict(prefill_tps=1000.0, decode_tps=10.0, batch_slowdown=0.5, block_size=4,
                                   num_blocks=64, max_num_seqs=8, max_num_batched_tokens=4096)
    base.update(kw)
    return EngineParams(**base)  # type: ignore[arg-type]


def ids(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def run(core: EngineCore, clock: list[float]) -> None:
    core.run_until_idle(clock)


# -- the block pool -------------------------------------------------------------------------------------


def test_pool_lru_evicts_least_recently_freed_and_tails_first() -> None:
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache(a[0], 10)
    pool.cache(a[1], 11)
    pool.release(a)  # freed tail first: a[1] is evicted before a[0]
    assert pool.usage() == 0.0 and pool.num_free == 4
    assert pool.longest_hit([10, 11], 2) == a
    b = pool.allocate(3)  # two never-used blocks, then the tail of a
    assert a[1] in b and a[0] not in b
    assert pool.longest_hit([10, 11], 2) == [a[0]]  # a chained prefix stops at the evicted block
    assert pool.longest_hit([11], 1) == []
    pool.touch([a[0]])  # a hit takes the block out of the free queue
    assert pool.num_free == 0 and pool.usage() == 1.0


def test_blocks_without_hash_are_reused_first() -> None:
    pool = BlockPool(3)
    x = pool.allocate(3)
    pool.cache(x[0], 1)
    pool.release([x[0]])
    pool.release([x[1]])  # never full: no hash
    assert pool.allocate(1) == [x[1]]
    assert pool.longest_hit([1], 1) == [x[0]]


# -- prefix cache as requests see it ---------------------------------------------------------------------


def test_same_prefix_hits_whole_blocks_and_never_the_last_token() -> None:
    core = EngineCore(params())
    clock = [0.0]
    first = core.add("m", ids(10), ids(3, 5000), clock[0])
    run(core, clock)
    assert first.hit_tokens == 0 and first.done
    # 10 prompt + 3 generated, 12 computed (the last token sampled is never computed): 3 full blocks
    again = core.add("m", ids(10), ids(1, 7000), clock[0])
    run(core, clock)
    assert again.hit_tokens == 8
    longer = core.add("m", ids(10) + ids(6, 5000) + ids(3, 9000), ids(1, 7000), clock[0])
    run(core, clock)
    # the prompt continues with what was generated: block [8:12] = 1008,1009,5000,5001 was cached in decode
    assert longer.hit_tokens == 12
    exact = core.add("m", ids(8), ids(1, 7000), clock[0])
    run(core, clock)
    assert exact.hit_tokens == 4  # 8 cached tokens, but the last token is always computed
    other = core.add("m", ids(10, 2000), ids(1), clock[0])
    run(core, clock)
    assert other.hit_tokens == 0
    assert core.stats.prefix_queries == 10 + 10 + 19 + 8 + 10
    assert core.stats.prefix_hits == 8 + 12 + 4


def test_a_block_is_named_by_its_whole_prefix() -> None:
    core = EngineCore(params())
    clock = [0.0]
    core.add("m", ids(4, 1) + ids(8), ids(1), clock[0])
    run(core, clock)
    shifted = core.add("m", ids(4, 2) + ids(8), ids(1), clock[0])  # same tokens after a different block
    run(core, clock)
    assert shifted.hit_tokens == 0


def test_prefix_caching_off() -> None:
    core = EngineCore(params(prefix_caching=False))
    clock = [0.0]
    core.add("m", ids(20), ids(1), clock[0])
    run(core, clock)
    s = core.add("m", ids(20), ids(1), clock[0])
    run(core, clock)
    assert s.hit_tokens == 0 and core.stats.prefix_hits == 0


def test_lru_capacity_evicts_old_conversations() -> None:
    core = EngineCore(params(num_blocks=8))  # 32 tokens of KV
    clock = [0.0]
    core.add("m", ids(16, 100), ids(1), clock[0])
    run(core, clock)
    core.add("m", ids(16, 200), ids(1), clock[0])  # needs 5 blocks: evicts 1 block of the first
    run(core, clock)
    core.add("m", ids(16, 300), ids(1), clock[0])
    run(core, clock)
    recent = core.add("m", ids(16, 300), ids(1), clock[0])
    run(core, clock)
    assert recent.hit_tokens == 12
    old = core.add("m", ids(16, 100), ids(1), clock[0])
    run(core, clock)
    assert old.hit_tokens == 0


def test_kv_usage_counts_blocks_held_by_requests() -> None:
    core = EngineCore(params(num_blocks=10))
    a = core.add("m", ids(9), ids(5), 0.0)
    step = core.schedule(0.0)
    assert [s for s, _ in step.work] == [a]
    assert core.pool.usage() == pytest.approx(3 / 10)  # 9 tokens in blocks of 4
    core.complete(step, step.duration)
    core.abort(a, 1.0)
    assert core.pool.usage() == 0.0 and not core.has_work()  # freed (its full blocks stay cached)
    assert core.pool.longest_hit(a.block_hashes(2, 4), 2) != []


# -- batching and time -------------------------------------------------------------------------------------


def test_ttft_is_queue_wait_plus_prefill_of_uncached_tokens() -> None:
    p = params(prefill_tps=100.0, decode_tps=10.0, batch_slowdown=0.0, max_num_seqs=1)
    core = EngineCore(p)
    clock = [0.0]
    a = core.add("m", ids(40), ids(3, 5000), 0.0)
    b = core.add("m", ids(40), ids(1, 6000), 0.0)
    run(core, clock)
    # a: prefill 40 tokens (0.1 s base + 0.4 s), then 2 decode steps of 0.1 s
    assert a.first_token_at == pytest.approx(0.5)
    assert a.finished_at == pytest.approx(0.7)
    # b waited for a's slot, then found 36 of its 40 tokens cached: prefill 4 tokens
    assert b.scheduled_at == pytest.approx(0.7) and b.hit_tokens == 36
    assert b.first_token_at == pytest.approx(0.7 + 0.1 + 0.04)


def test_max_num_seqs_queues_the_rest() -> None:
    core = EngineCore(params(max_num_seqs=2))
    seqs = [core.add("m", ids(4, 100 * i), ids(5), 0.0) for i in range(3)]
    step = core.schedule(0.0)
    assert [s for s, _ in step.work] == seqs[:2]
    assert core.counts() == {"m": (2, 1)}
    clock = [step.duration]
    core.complete(step, clock[0])
    run(core, clock)
    assert seqs[2].scheduled_at == pytest.approx(seqs[0].finished_at)


def test_decode_slows_down_with_batch_size() -> None:
    p = params(decode_tps=10.0, batch_slowdown=0.5)
    assert p.step_time(1, 0) == pytest.approx(0.1)
    assert p.step_time(3, 0) == pytest.approx(0.2)  # (1 + 0.5 * 2) / 10
    assert p.step_time(3, 500) == pytest.approx(0.2 + 0.5)

    def decode_time(n: int) -> float:
        core = EngineCore(p)
        seqs = [core.add("m", ids(3, 100 * i), ids(11), 0.0) for i in range(n)]
        run(core, [0.0])
        s = seqs[0]
        assert s.finished_at is not None and s.first_token_at is not None
        return s.finished_at - s.first_token_at

    assert decode_time(1) == pytest.approx(1.0)  # 10 decode steps at 10 tokens/s
    assert decode_time(4) == pytest.approx(2.5)  # batch of 4: each step 0.25 s
    # throughput still grows with the batch: 4 sequences in 2.5 s vs 1 in 1 s


def test_chunked_prefill_shares_steps_with_decodes() -> None:
    core = EngineCore(params(max_num_batched_tokens=16, prefill_tps=100.0, batch_slowdown=0.0))
    short = core.add("m", ids(3), ids(4), 0.0)
    clock = [0.0]
    step = core.schedule(clock[0])
    clock[0] += step.duration
    core.complete(step, clock[0])
    assert short.generated == 1
    long = core.add("m", ids(40, 500), ids(1), clock[0])
    step = core.schedule(clock[0])
    assert [(s, n) for s, n in step.work] == [(short, 1), (long, 15)]
    assert step.decodes == 1 and step.prefill_tokens == 15
    clock[0] += step.duration
    core.complete(step, clock[0])
    assert long.generated == 0 and long.computed == 15 and short.generated == 2


def test_out_of_blocks_preempts_the_latest_and_recomputes_it() -> None:
    core = EngineCore(params(num_blocks=6, max_num_seqs=4))  # 24 tokens of KV
    clock = [0.0]
    first = core.add("m", ids(8, 100), ids(8), 0.0)  # grows to 16 tokens = 4 blocks
    second = core.add("m", ids(8, 200), ids(8), 0.0)
    run(core, clock)
    assert first.done and second.done
    assert core.stats.preemptions >= 1 and second.preemptions >= 1 and first.preemptions == 0
    assert first.generated == 8 and second.generated == 8
    assert core.stats.prefix_queries == 16  # a preempted request's second lookup is not counted again


def test_abort_of_a_waiting_request_and_too_big_requests() -> None:
    core = EngineCore(params(max_num_seqs=1, num_blocks=4))
    a = core.add("m", ids(4), ids(3), 0.0)
    b = core.add("m", ids(4, 50), ids(3), 0.0)
    core.abort(b, 0.0)
    assert b.done and list(core.waiting) == [a]
    with pytest.raises(ValueError, match="KV cache"):
        core.add("m", ids(15), ids(2), 0.0)


# -- token ids --------------------------------------------------------------------------------------------


def test_engine_ids_follow_the_simulators_tokenizer() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there you"}]
    engine = chat_ids(messages)
    assert engine[:-3] == tokens.chat_ids(messages)  # plus the assistant header the answer follows
    prompt = tokens.chat_prompt(messages)
    answer = output_ids(prompt, 5)
    text = "".join(tokens.generate(prompt, 5))
    follow_up = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "and?"}]
    # the next turn's prompt starts with this turn's prompt and answer, token for token
    assert chat_ids(follow_up)[: len(engine) + 5] == engine + answer
    assert prompt_ids("completion", {"prompt": "a b c"}, tokens.completion_prompt("a b c")) == tokens.text_ids("a b c")
    assert prompt_ids("completion", {"prompt": [1, 2]}, tokens.completion_prompt([1, 2])) == [1, 2]


def test_seq_hashes_are_chained_and_lazy() -> None:
    s = Seq(1, "m", ids(8), ids(4, 9), 8, 0.0)
    h = list(s.block_hashes(2, 4))
    assert len(h) == 2 and h[0] != h[1]
    assert s.block_hashes(3, 4)[:2] == h
