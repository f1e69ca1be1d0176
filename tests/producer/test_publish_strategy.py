"""The publish strategy is written once (``PublishStrategy.plan``); the sync and the async
driver run the same steps in the same order, and undo the same way when the broker fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import Names
from fin_relay.embedded_redis import free_port
from fin_relay.producer import Producer
from fin_relay.producer.prepare import PreparedJob, prepare
from fin_relay.producer.transport import (
    Abandon,
    Mark,
    PublishStrategy,
    Pushed,
    PushOptions,
    Send,
    Step,
    drive_async,
    drive_sync,
)
from tests.producer.helpers import USER, queued_messages, settings_for

JOB = prepare("reply", {"conversation_id": "c", "user": USER, "message": "hi", "job_id": "j-1"})
STRATEGIES = {
    "direct": PublishStrategy(direct=True, celery=False),
    "redis-broker": PublishStrategy(direct=False, celery=False),
    "celery": PublishStrategy(direct=False, celery=True),
}


class Broker:
    """Runs steps without I/O and records them; ``fail`` names step kinds that raise."""

    def __init__(self, *, created: bool, fail: tuple[type, ...] = ()) -> None:
        self.created, self.fail, self.steps = created, fail, list[Step]()

    def run(self, step: Step) -> Any:
        self.steps.append(step)
        if isinstance(step, self.fail):
            raise BrokerUnavailableError(f"{type(step).__name__} failed")
        return (
            Pushed(created=self.created, results_from="0-0", seq=7)
            if isinstance(step, Mark)
            else None
        )

    async def run_async(self, step: Step) -> Any:
        await asyncio.sleep(0)
        return self.run(step)


def _both(
    strategy: PublishStrategy, job: PreparedJob, **broker: Any
) -> list[tuple[list[Step], Any]]:
    """Run the plan with each driver: [(steps, outcome or the exception)] for sync, async."""
    out = []
    for drive in ("sync", "async"):
        fake = Broker(**broker)
        plan = strategy.plan(job, idempotent=True)
        try:
            if drive == "sync":
                outcome: Any = drive_sync(plan, fake.run)
            else:
                outcome = asyncio.run(drive_async(plan, fake.run_async))
        except BrokerUnavailableError as exc:
            outcome = exc
        out.append((fake.steps, outcome))
    return out


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("created", [True, False])
def test_the_drivers_take_the_same_steps(name: str, created: bool) -> None:
    (sync_steps, sync_out), (async_steps, async_out) = _both(STRATEGIES[name], JOB, created=created)
    assert sync_steps == async_steps
    assert sync_out == async_out == Pushed(created=created, results_from="0-0", seq=7)
    mark = sync_steps[0]
    assert isinstance(mark, Mark)
    direct, celery = name == "direct", name == "celery"
    assert mark.options == PushOptions(publish=direct, idempotent=True, number=celery)
    sends = [] if direct or not created else [Send(JOB, "celery" if celery else "redis")]
    assert sync_steps[1:] == sends  # a duplicate (created False) is never sent again


@pytest.mark.parametrize("name", ["redis-broker", "celery"])
def test_a_failed_send_is_abandoned_then_raised_by_both_drivers(name: str) -> None:
    runs = _both(STRATEGIES[name], JOB, created=True, fail=(Send,))
    for steps, outcome in runs:
        assert [type(s) for s in steps] == [Mark, Send, Abandon]
        assert steps[2] == Abandon(JOB, 7)
        assert isinstance(outcome, BrokerUnavailableError) and str(outcome) == "Send failed"


def test_when_the_abandon_fails_too_its_error_names_the_send_failure_as_context() -> None:
    runs = _both(STRATEGIES["celery"], JOB, created=True, fail=(Send, Abandon))
    for _steps, outcome in runs:
        assert str(outcome) == "Abandon failed"
        assert str(outcome.__context__) == "Send failed"


def test_a_failed_mark_is_raised_and_nothing_is_sent() -> None:
    for name, strategy in STRATEGIES.items():
        for steps, outcome in _both(strategy, JOB, created=True, fail=(Mark,)):
            assert [type(s) for s in steps] == [Mark], name
            assert str(outcome) == "Mark failed"


def test_other_exceptions_pass_through_the_plan_unchanged() -> None:
    def cancelled(step: Step) -> Any:
        if isinstance(step, Send):
            raise KeyboardInterrupt
        return Pushed(created=True, results_from="0-0", seq=1)

    with pytest.raises(KeyboardInterrupt):
        drive_sync(STRATEGIES["celery"].plan(JOB), cancelled)


# --- the same through a real Producer, sync and async ------------------------------------


def test_another_redis_broker_gets_the_job_sync_and_async(
    redis_url: str, redis_client: redis.Redis
) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/4"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()

    async def enqueue_async(p: Producer) -> str:
        handle = await p.csat_async(conversation_id="c", rating="ok", job_id="rb-2")
        again = await p.csat_async(conversation_id="c", rating="ok", job_id="rb-2")
        assert handle.created and not again.created
        await p.aclose()
        return handle.id

    try:
        with Producer(settings_for(redis_url, fin_broker_url=broker_url)) as p:
            first = p.csat(conversation_id="c", rating="ok", job_id="rb-1")
            assert not p.csat(conversation_id="c", rating="ok", job_id="rb-1").created
            second = asyncio.run(enqueue_async(p))
        assert redis_client.llen("fin.calls") == 0
        assert [m["headers"]["id"] for m in queued_messages(broker)] == [first.id, second]
    finally:
        broker.flushdb()
        broker.close()


def test_another_redis_broker_down_forgets_the_marker_sync_and_async(
    redis_url: str, redis_client: redis.Redis
) -> None:
    names = Names("fin")
    down = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_for(redis_url, fin_broker_url=down, fin_relay_enqueue_timeout_s=0.5)

    async def enqueue_async(p: Producer) -> None:
        with pytest.raises(BrokerUnavailableError, match="Redis broker unavailable"):
            await p.reply_async(conversation_id="c", user=USER, message="x", job_id="down-2")
        await p.aclose()

    with Producer(settings) as p:
        with pytest.raises(BrokerUnavailableError, match="Redis broker unavailable"):
            p.reply(conversation_id="c", user=USER, message="x", job_id="down-1")
        asyncio.run(enqueue_async(p))
    for job_id in ("down-1", "down-2"):  # the same id can be enqueued again later
        assert not redis_client.exists(names.job_idempotency(job_id))


def test_a_failed_publish_releases_the_sequence_number_sync_and_async(
    redis_url: str, redis_client: redis.Redis
) -> None:
    names = Names("fin")
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    settings = settings_for(redis_url, fin_broker_url=down, fin_relay_enqueue_timeout_s=0.5)

    async def enqueue_async(p: Producer) -> None:
        with pytest.raises(BrokerUnavailableError):
            await p.reply_async(conversation_id="c-rel", user=USER, message="x", job_id="rel-2")
        await p.aclose()

    with Producer(settings) as p:
        with pytest.raises(BrokerUnavailableError):
            p.reply(conversation_id="c-rel", user=USER, message="x", job_id="rel-1")
        asyncio.run(enqueue_async(p))
    # numbers 1 and 2 were handed out, then released: nothing is held behind them
    assert redis_client.get(names.conversation_seq("c-rel")) == "2"
    assert redis_client.get(names.conversation_next("c-rel")) == "3"
    for job_id in ("rel-1", "rel-2"):
        assert not redis_client.exists(names.job_idempotency(job_id))
        assert redis_client.hget(names.job(job_id), "seq") is None
