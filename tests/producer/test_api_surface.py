"""The typed operations are generated from one table; what users see stays what the
hand-written functions showed: names, signatures, docstrings (``help()``), coroutine-ness, and
mypy's checking of every call site against the operation's TypedDict."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import fin_relay.producer as package
from fin_relay.producer import Producer
from fin_relay.producer import enqueue as module

REPO = Path(__file__).resolve().parents[2]
ARGS = {
    "start": "StartArgs",
    "reply": "ReplyArgs",
    "ask": "StartArgs",
    "escalate": "EscalateArgs",
    "csat": "CsatArgs",
    "capabilities": "CapabilitiesArgs",
    "procedure_run": "ProcedureRunArgs",
}
DOCS = {
    "start": "``POST /fin/start``: hand a new conversation to Fin.",
    "reply": "``POST /fin/reply``: the user's next message in a conversation Fin handles.",
    "ask": "``POST /fin/ask``: a one-off question (same fields as start).",
    "escalate": "``POST /fin/escalate``: hand the conversation (or user) to a human.",
    "csat": "``POST /fin/csat``: the user's satisfaction rating.",
    "capabilities": "``POST /fin/capabilities``: what Fin can do for a user.",
    "procedure_run": "``POST /fin/procedures/{procedure_id}/run`` (Preview).",
}


def test_the_package_exports_are_unchanged() -> None:
    assert package.__all__ == [
        "BrokerUnavailableError", "ConversationState", "Envelope", "InvalidJobError", "JobHandle",
        "Producer", "ask", "ask_async", "capabilities", "capabilities_async", "csat",
        "csat_async", "default_producer", "escalate", "escalate_async", "get_conversation",
        "procedure_run", "procedure_run_async", "reply", "reply_async", "set_default_producer",
        "start", "start_async",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ARGS)
def test_each_operation_looks_as_if_written_by_hand(name: str) -> None:
    arguments = f"**arguments: 'Unpack[{ARGS[name]}]'"
    expected = {
        (Producer, name): (f"(self, {arguments}) -> 'JobHandle'", DOCS[name]),
        (Producer, f"{name}_async"): (
            f"(self, {arguments}) -> 'JobHandle'",
            f":meth:`{name}` inside an event loop.",
        ),
        (package, name): (
            f"({arguments}) -> 'JobHandle'",
            f":meth:`Producer.{name}` on the default producer.",
        ),
        (package, f"{name}_async"): (
            f"({arguments}) -> 'JobHandle'",
            f":meth:`Producer.{name}_async` on the default producer.",
        ),
    }
    for (owner, attribute), (signature, doc) in expected.items():
        function = getattr(owner, attribute)
        assert inspect.isfunction(function), attribute
        assert str(inspect.signature(function)) == signature, attribute
        assert inspect.getdoc(function) == doc, attribute
        assert function.__name__ == attribute
        in_class = owner is Producer
        assert function.__qualname__ == (f"Producer.{attribute}" if in_class else attribute)
        assert function.__module__ == "fin_relay.producer.enqueue"
        assert inspect.iscoroutinefunction(function) == attribute.endswith("_async"), attribute
        assert getattr(module, attribute) is getattr(package, attribute) or in_class


def test_help_lists_every_operation_with_its_docstring() -> None:
    import pydoc

    text = pydoc.render_doc(Producer, renderer=pydoc.plaintext)
    for name, doc in DOCS.items():
        assert f"{name}(self, **arguments: 'Unpack[{ARGS[name]}]') -> 'JobHandle'" in text
        assert f"async {name}_async(self, **arguments" in text
        assert doc in text


CALL_SITES = """\
from fin_relay.producer import JobHandle, Producer, csat_async, start

async def main(producer: Producer) -> None:
    ok: JobHandle = producer.start(conversation_id="c", user={"id": "u"}, message="hi")
    ok = await producer.reply_async(conversation_id="c", user={"id": "u"}, message="2")
    ok = start(conversation_id="c", user={"id": "u"}, message="hi", metadata={"a": 1})
    ok = await csat_async(conversation_id="c", rating="amazing")
    producer.start(conversation_id=1, user={"id": "u"}, message="hi")
    producer.start(conversation_id="c", user={"id": "u"})
    await producer.escalate_async(conversation_id="c", bogus=True)
    start("c")
    ok = producer.start_async(conversation_id="c", user={"id": "u"}, message="hi")
"""


def test_mypy_checks_call_sites_against_each_operations_arguments(tmp_path: Path) -> None:
    """Generated, and still typed: ``producer.start(...)`` is checked against ``StartArgs``."""
    pytest.importorskip("mypy")
    source = tmp_path / "call_sites.py"
    source.write_text(CALL_SITES)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,  # the project's mypy settings (strict)
    )
    errors = sorted(
        {
            (int(line.split(":")[1]), line.rsplit("[", 1)[1].rstrip("]"))
            for line in done.stdout.splitlines()
            if line.startswith(f"{source}:") and ": error: " in line
        }
    )
    assert errors == [
        (8, "arg-type"),  # conversation_id is a str
        (9, "call-arg"),  # message is required
        (10, "call-arg"),  # no such argument
        (11, "call-arg"),  # keyword arguments only
        (12, "assignment"),  # the _async twin returns a coroutine
    ], done.stdout + done.stderr
