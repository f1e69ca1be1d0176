"""Reading one conversation's state (written by the worker; see ``contract.conversation``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fin_relay.contract.conversation import ConversationState, read_state
from fin_relay.contract.names import Names
from fin_relay.producer.transport import redis_errors


def get_state(client: Any, names: Names, conversation_id: str) -> ConversationState:
    """State of ``conversation_id`` (all fields empty/False when fin-relay never saw it)."""
    with redis_errors():
        return read_state(client, names.conversation_state(conversation_id), conversation_id)


async def get_state_async(
    client: Any, names: Names, conversation_id: str, timeout_s: float
) -> ConversationState:
    """:func:`get_state` with a ``redis.asyncio`` client, within ``timeout_s``."""
    with redis_errors():
        async with asyncio.timeout(timeout_s):
            raw = await client.hgetall(names.conversation_state(conversation_id))
    return ConversationState.from_hash(conversation_id, raw)


def get_conversation(conversation_id: str) -> ConversationState:
    """State of one conversation, through the default producer's Redis client."""
    from fin_relay.producer.enqueue import default_producer

    return default_producer().get_conversation(conversation_id)
