"""The task-message reader exists twice, in Python (``celery_wire.read_call``) and in Lua
(``celery_wire.lua``, run inside Redis by the worker transport's take). One rule: both read the
same messages, built by every kind of producer, to the same task, id and conversation, and
both refuse the same malformed ones."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from celery import Celery

from fin_relay.contract import celery_wire

pytestmark = pytest.mark.integration

_EVAL = (
    celery_wire.LUA_READER
    + """
local ok, message = pcall(cjson.decode, ARGV[1])
if not ok then return false end
local task, id, kwargs = celery_wire_read(message)
if task == nil then return false end
return {task, id, celery_wire_conversation(kwargs) or ''}
"""
)


def lua_read(client: redis.Redis, item: str) -> tuple[str, str, str | None] | None:
    reply = client.eval(_EVAL, 0, item)
    if not reply:
        return None
    task, task_id, cid = (v.decode() if isinstance(v, bytes) else v for v in reply)
    return task, task_id, cid or None


def celery_item(client: redis.Redis, url: str, protocol: int, **kwargs: Any) -> str:
    """What a plain Celery client (stock kombu transport) LPUSHes for ``send_task``."""
    app = Celery("plain", broker=url, set_as_current=False)
    app.conf.task_protocol = protocol
    try:
        app.send_task("fin.start", kwargs=kwargs, queue="wire-test", task_id=f"p{protocol}")
    finally:
        app.close()
    item = client.rpop("wire-test")
    assert item is not None
    return item.decode() if isinstance(item, bytes) else str(item)


def envelope(body: Any, *, encoding: str | None = "base64", task: Any = "fin.reply") -> str:
    raw = json.dumps(body) if not isinstance(body, str) else body
    text = base64.b64encode(raw.encode()).decode() if encoding == "base64" else raw
    headers = {"task": task, "id": "j-1"} if task is not None else {}
    properties: dict[str, Any] = {"delivery_tag": "t"}
    if encoding is not None:
        properties["body_encoding"] = encoding
    return json.dumps({"body": text, "headers": headers, "properties": properties})


def messages(redis_url: str, redis_client: redis.Redis) -> tuple[dict[str, str], dict[str, str]]:
    """Task messages both readers must read the same (``items``), and ones both refuse."""
    kwargs = {"conversation_id": "c-é☃", "message": {"body": "hi"}, "user": {"id": "u"}}
    items = {
        "hand-built (producer, raw LPUSH)": celery_wire.task_message(
            "fin.reply", kwargs, task_id="j-0"
        )[1],
        "celery protocol 2": celery_item(redis_client, redis_url, 2, **kwargs),
        "celery protocol 1": celery_item(redis_client, redis_url, 1, **kwargs),
        "hybrid body": envelope({"args": [], "kwargs": kwargs}),
        "json body, no encoding": envelope([[], kwargs, {}], encoding=None),
        "kwargs null": envelope([[], None, {}]),
        "no conversation": envelope([[], {"user": {"id": "u"}}, {}]),
        "conversation not a string": envelope([[], {"conversation_id": 7}, {}]),
        "conversation empty": envelope([[], {"conversation_id": ""}, {}]),
    }
    refused = {
        "not json": "hello",
        "a list": "[1, 2]",
        "no body": json.dumps({"headers": {"task": "fin.start", "id": "x"}}),
        "bad base64": envelope("[[], {}, {}]", encoding=None).replace(
            '"properties": {', '"properties": {"body_encoding": "base64", '
        ),
        "body not json": envelope("not json"),
        "two parts": envelope([[], kwargs]),
        "object without args": envelope({"kwargs": kwargs}),
        "kwargs a list": envelope([[], ["conversation_id"], {}]),
        "task not a string": envelope([[], kwargs, {}], task=5),
        "protocol 1 without id": envelope({"task": "fin.start", "kwargs": kwargs}, task=None),
    }
    return items, refused


def test_python_and_lua_readers_agree(redis_url: str, redis_client: redis.Redis) -> None:
    items, refused = messages(redis_url, redis_client)
    seen = {}
    for name, item in {**items, **refused}.items():
        python, lua = celery_wire.read_call(item), lua_read(redis_client, item)
        assert python == lua, (name, python, lua)
        seen[name] = python
    for name in refused:
        assert seen[name] is None, name
    assert seen["hand-built (producer, raw LPUSH)"] == ("fin.reply", "j-0", "c-é☃")
    assert seen["celery protocol 2"] == ("fin.start", "p2", "c-é☃")
    assert seen["celery protocol 1"] == ("fin.start", "p1", "c-é☃")
    assert seen["hybrid body"] == ("fin.reply", "j-1", "c-é☃")
    assert seen["json body, no encoding"] == ("fin.reply", "j-1", "c-é☃")
    for name in ("kwargs null", "no conversation", "conversation not a string"):
        assert seen[name] == ("fin.reply", "j-1", None), name


_NAMED = (
    celery_wire.LUA_READER
    + """
local ok, message = pcall(cjson.decode, ARGV[1])
if not ok then return false end
return celery_wire_named_task(message) or false
"""
)


def test_the_header_read_names_the_task_the_full_read_would(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The take skips the body of a message whose headers name a task that is no call: the
    task read from the headers alone is the one the full read names, whenever it names one."""
    items, refused = messages(redis_url, redis_client)
    named = {}
    for name, item in {**items, **refused}.items():
        reply = redis_client.eval(_NAMED, 0, item)
        named[name] = reply.decode() if isinstance(reply, bytes) else reply
        full = celery_wire.read_call(item)
        if named[name] is not None and full is not None:
            assert full[0] == named[name], (name, full, named[name])
    assert named["celery protocol 2"] == "fin.start"
    assert named["hand-built (producer, raw LPUSH)"] == "fin.reply"
    # protocol 1 names its task in the body only; a task that is no string is not named
    assert named["celery protocol 1"] is None
    assert named["task not a string"] is None
    # named without its body being read: the full read refuses these
    expected = {"bad base64": "fin.reply", "body not json": "fin.reply", "no body": "fin.start"}
    for name, task in expected.items():
        assert named[name] == task, name
        assert celery_wire.read_call(refused[name]) is None, name
