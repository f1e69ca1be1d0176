"""The async variants, inside a running event loop, against a real Redis."""

from __future__ import annotations

import asyncio

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.publish import add_publish
from fin_relay.producer import Producer
from tests.producer.helpers import USER, queued_messages, settings_for


def test_async_variants_enqueue_while_the_loop_keeps_ticking(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> tuple[list[str], int, Envelope]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        async with Producer(settings_for(redis_url)) as p:
            handles = [
                await p.start_async(conversation_id="c", user=USER, message="a"),
                await p.reply_async(conversation_id="c", user=USER, message="b", job_id="r-1"),
                await p.reply_async(conversation_id="c", user=USER, message="b", job_id="r-1"),
                await p.ask_async(conversation_id="c", user=USER, message="c"),
                await p.escalate_async(user=USER, message="human please"),
                await p.csat_async(conversation_id="c", rating="amazing"),
                await p.capabilities_async(user=USER),
                await p.procedure_run_async(procedure_id="p", conversation_id="c", user=USER),
            ]
            assert [h.created for h in handles].count(False) == 1
            waiter = asyncio.create_task(handles[0].wait_async(timeout_s=5))
            await asyncio.sleep(0.05)
            names = Names("fin")
            envelope = Envelope.now(
                id="e1", type="call.succeeded", conversation_id="c", data={"job_id": handles[0].id}
            )
            pipe = p._async_client("main").pipeline(transaction=False)
            add_publish(pipe, names, names.results, envelope, maxlen=100)
            await pipe.execute()
            outcome = await waiter
            state = await p.get_conversation_async("c")
            assert state.conversation_id == "c"
        stop.set()
        await tick_task
        return [h.task for h in handles], ticks, outcome

    tasks, ticks, outcome = asyncio.run(scenario())
    assert tasks[0] == "fin.start" and tasks[-1] == "fin.procedure_run"
    assert ticks > 1
    assert outcome.id == "e1"
    assert len(queued_messages(redis_client)) == 7
