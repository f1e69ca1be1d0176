"""The webhook sender's small HTTP client against a real HTTP server (the test receiver)."""

from __future__ import annotations

import asyncio

import pytest

from fin_relay.simulator.httpclient import RawPostClient


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_keep_alive_reuse_and_idle_expiry(webhook_receiver):
    async def scenario():
        client = RawPostClient()
        client.max_idle_s = 0.2
        statuses = [
            await client.post(
                webhook_receiver.url, b'{"a":1}', [("Content-Type", "application/json")], 5
            )
        ]
        statuses.append(await client.post(webhook_receiver.url, b'{"a":2}', [], 5))
        reused_connects = client.connects
        await asyncio.sleep(0.3)  # longer than max_idle_s: the pooled connection is not reused
        statuses.append(await client.post(webhook_receiver.url, b'{"a":3}', [], 5))
        client.close()
        return statuses, reused_connects, client.connects

    statuses, reused_connects, connects = _run(scenario())
    assert statuses == [200, 200, 200]
    assert reused_connects == 1 and connects == 2
    assert [p.body for p in webhook_receiver.posts()] == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
    assert webhook_receiver.posts()[0].headers["Content-Type"] == "application/json"


def test_status_timeout_and_refused(webhook_receiver):
    webhook_receiver.fail_next(1, status=502)

    async def scenario():
        client = RawPostClient()
        status = await client.post(webhook_receiver.url, b"{}", [], 5)
        webhook_receiver.hang_next(1, 1.0)
        with pytest.raises(TimeoutError):
            await client.post(webhook_receiver.url, b"{}", [], 0.2)
        with pytest.raises(OSError):
            await client.post("http://127.0.0.1:9/x", b"{}", [], 2)
        with pytest.raises(ValueError):
            await client.post("https://example.com/x", b"{}", [], 2)
        client.close()
        return status

    assert _run(scenario()) == 502
