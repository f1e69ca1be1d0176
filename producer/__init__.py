"""The producer: enqueue Fin calls from any service; consume what fin-relay publishes.

Never imports the worker: a service that only enqueues does not pull in its HTTP client.
"""

from fin_relay.contract.conversation import ConversationState
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.errors import BrokerUnavailableError, InvalidJobError
from fin_relay.producer.conversation import get_conversation
from fin_relay.producer.enqueue import (
    Producer,
    ask,
    ask_async,
    capabilities,
    capabilities_async,
    csat,
    csat_async,
    default_producer,
    escalate,
    escalate_async,
    procedure_run,
    procedure_run_async,
    reply,
    reply_async,
    set_default_producer,
    start,
    start_async,
)
from fin_relay.producer.handle import JobHandle

__all__ = [
    "BrokerUnavailableError",
    "ConversationState",
    "Envelope",
    "InvalidJobError",
    "JobHandle",
    "Producer",
    "ask",
    "ask_async",
    "capabilities",
    "capabilities_async",
    "csat",
    "csat_async",
    "default_producer",
    "escalate",
    "escalate_async",
    "get_conversation",
    "procedure_run",
    "procedure_run_async",
    "reply",
    "reply_async",
    "set_default_producer",
    "start",
    "start_async",
]
