"""ToolAgent: schemas, call parsing, argument checks, the tool loop, and every
bad call recorded in the turns instead of crashing."""

import json

import pytest

from convergence_jax.agents.agent import StubBackend
from convergence_jax.agents.tools import (
    Tool,
    ToolAgent,
    ToolCall,
    check_arguments,
    parse_tool_calls,
)
from convergence_jax.agents.trajectory import MultiTurnTrajectory

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Find an order by id.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "verbose": {"type": "boolean"},
                "limit": {"type": "integer"},
            },
            "required": ["order_id"],
            "additionalProperties": False,
        },
    },
}
ORDERS = {"A1": {"status": "shipped"}}
USER = [{"role": "user", "content": "Where is order A1?"}]


def lookup(order_id, verbose=False, limit=1):
    return ORDERS[order_id]


def agent_for(responses, **kwargs):
    backend = StubBackend(responses, cycle=False)
    return ToolAgent(backend, [(LOOKUP, lookup)], **kwargs), backend


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text",
    [
        '{"tool": "lookup", "arguments": {"order_id": "A1"}}',
        '{"name": "lookup", "arguments": {"order_id": "A1"}}',
        '{"name": "lookup", "parameters": {"order_id": "A1"}}',
        '{"function": {"name": "lookup", "arguments": "{\\"order_id\\": \\"A1\\"}"}}',
        '{"tool_call": {"name": "lookup", "arguments": {"order_id": "A1"}}}',
        'Let me check.\n```json\n{"tool": "lookup", "arguments": {"order_id": "A1"}}'
        "\n```\nOne moment.",
        '<tool_call>{"name": "lookup", "arguments": {"order_id": "A1"}}</tool_call>',
        'Sure: {"tool": "lookup", "arguments": {"order_id": "A1"}} (checking)',
    ],
)
def test_accepted_call_forms(text):
    parsed = parse_tool_calls(text)
    assert parsed.error is None
    assert parsed.calls == [ToolCall("lookup", {"order_id": "A1"})]


def test_several_calls_in_a_list():
    parsed = parse_tool_calls(
        '[{"tool": "lookup", "arguments": {"order_id": "A1"}}, '
        '{"tool": "lookup", "arguments": {"order_id": "B2"}}]'
    )
    assert [c.arguments["order_id"] for c in parsed.calls] == ["A1", "B2"]


@pytest.mark.parametrize(
    "text",
    ["Your order shipped.", "Use braces {like this} freely.", '{"answer": 42}'],
)
def test_plain_text_is_not_a_call(text):
    parsed = parse_tool_calls(text)
    assert not parsed.is_call


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"tool": "lookup", "arguments": {"order_id": "A1"}', "not valid JSON"),
        ('{"tool": "lookup", "arguments": "{bad json"}', "arguments of 'lookup'"),
        ('{"tool": 5, "arguments": {}}', "must be a string"),
        ("<tool_call>lookup A1</tool_call>", "not valid JSON"),
    ],
)
def test_unparseable_calls_give_errors(text, match):
    parsed = parse_tool_calls(text)
    assert parsed.calls == [] and parsed.is_call
    assert match in parsed.error


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize(
    "schema, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"description": "no name"}, "needs a 'name'"),
        ({"name": "bad name!"}, "must match"),
        ({"name": "f", "parameters": {"type": "array"}}, "must be 'object'"),
        (
            {"name": "f", "parameters": {"properties": {"x": {"type": "text"}}}},
            "not one of",
        ),
        (
            {"name": "f", "parameters": {"properties": {}, "required": ["x"]}},
            "not in its properties",
        ),
        ({"name": "f", "parameters": {"properties": {"x": {}}}}, "needs a 'type'"),
        ({"name": "f", "extra": 1}, "unknown keys"),
        ({"type": "function", "function": "f"}, "must be an object"),
    ],
)
def test_bad_schema_raises_at_construction(schema, match):
    with pytest.raises(ValueError, match=match):
        Tool.from_schema(schema, lookup)
    with pytest.raises(ValueError, match=match):
        ToolAgent(StubBackend(["ok"]), [(schema, lookup)])


def test_bad_tool_lists():
    with pytest.raises(ValueError, match="at least one tool"):
        ToolAgent(StubBackend(["ok"]), [])
    with pytest.raises(ValueError, match="second tool"):
        ToolAgent(StubBackend(["ok"]), [(LOOKUP, lookup), (LOOKUP, lookup)])
    with pytest.raises(ValueError, match="callable"):
        Tool.from_schema(LOOKUP, "not a function")
    with pytest.raises(ValueError, match="max_tool_rounds"):
        ToolAgent(StubBackend(["ok"]), [(LOOKUP, lookup)], max_tool_rounds=-1)


def test_schema_as_json_string_and_listing():
    tool = Tool.from_schema(json.dumps(LOOKUP), lookup)
    assert tool.schema() == LOOKUP
    agent, backend = agent_for(["done"])
    agent.generate_response(USER)
    system = backend.calls[0][0][0]
    assert system["role"] == "system" and '"name": "lookup"' in system["content"]


def test_tool_listing_joins_the_leading_system_message():
    backend = StubBackend(["done"])
    agent = ToolAgent(backend, [(LOOKUP, lookup)], system_prompt="Be brief.")
    agent.generate_response(USER)
    sent = backend.calls[-1][0]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"].startswith("Be brief.\n\nYou can call these tools")
    agent.generate_response([{"role": "system", "content": "Mine."}, *USER])
    sent = backend.calls[-1][0]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"].startswith("Mine.\n\nYou can call these tools")


def test_check_arguments():
    params = LOOKUP["function"]["parameters"]
    assert check_arguments(params, {"order_id": "A1", "limit": 2}) == []
    assert check_arguments(params, {"order_id": "A1", "limit": 2.0}) == []
    problems = check_arguments(params, {"verbose": "yes", "limit": True, "x": 1})
    text = "; ".join(problems)
    assert "missing required property 'order_id'" in text
    assert "arguments.verbose must be boolean" in text
    assert "arguments.limit must be integer" in text
    assert "unexpected properties ['x']" in text
    nested = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "number"}},
            "mode": {"enum": ["a", "b"]},
        },
    }
    assert check_arguments(nested, {"items": [1, 2.5], "mode": "a"}) == []
    text = "; ".join(check_arguments(nested, {"items": [1, "2"], "mode": "c"}))
    assert "items[1] must be number" in text and "must be one of ['a', 'b']" in text


# ---------------------------------------------------------------- the loop


def test_tool_loop_runs_the_tool_and_feeds_the_result_back():
    agent, backend = agent_for(
        [
            '{"tool": "lookup", "arguments": {"order_id": "A1"}}',
            "Order A1 has shipped.",
        ]
    )
    turns = agent.respond(USER)
    assert [t.role for t in turns] == ["assistant", "tool", "assistant"]
    call, result, answer = turns
    assert call.metadata["tool_calls"] == [
        {"id": "call_0", "name": "lookup", "arguments": {"order_id": "A1"}}
    ]
    assert result.name == "lookup" and result.tool_call_id == "call_0"
    assert json.loads(result.content) == {"status": "shipped"}
    assert result.metadata["ok"] is True
    assert answer.content == "Order A1 has shipped."
    second_prompt = backend.calls[1][0]
    assert second_prompt[-1] == {
        "role": "tool",
        "content": '{"status": "shipped"}',
        "name": "lookup",
        "tool_call_id": "call_0",
    }
    # the trajectory is valid and round-trips
    trajectory = MultiTurnTrajectory.from_messages(USER + [t.to_dict() for t in turns])
    assert trajectory.turns[2].tool_call_id == "call_0"


def test_async_tool_and_string_result():
    async def greet(name):
        return f"hello {name}"

    schema = {
        "name": "greet",
        "parameters": {"properties": {"name": {"type": "string"}}},
    }
    backend = StubBackend(['{"tool": "greet", "arguments": {"name": "Ana"}}', "ok"])
    turns = ToolAgent(backend, [(schema, greet)]).respond(USER)
    assert turns[1].content == "hello Ana"


@pytest.mark.parametrize(
    "call, error_type, match",
    [
        ('{"tool": "lookup", "arguments": {"order_id": "A1"', "parse_error", "JSON"),
        ('{"tool": "refund", "arguments": {}}', "unknown_tool", "unknown tool"),
        ('{"tool": "lookup", "arguments": {}}', "bad_arguments", "order_id"),
        ('{"tool": "lookup", "arguments": [1]}', "bad_arguments", "JSON object"),
        ('{"tool": "lookup", "arguments": {"order_id": 7}}', "bad_arguments", "string"),
        (
            '{"tool": "lookup", "arguments": {"order_id": "Z9"}}',
            "tool_raised",
            "KeyError",
        ),
    ],
)
def test_bad_calls_are_recorded_not_raised(call, error_type, match):
    agent, backend = agent_for([call, "Sorry, I could not find it."])
    turns = agent.respond(USER)
    assert [t.role for t in turns] == ["assistant", "tool", "assistant"]
    error = turns[1]
    assert error.metadata["ok"] is False
    assert error.metadata["error_type"] == error_type
    assert match in error.metadata["error"]
    assert match in json.loads(error.content)["error"]
    assert error.tool_call_id == "call_0"
    assert turns[-1].content == "Sorry, I could not find it."
    assert backend.calls[1][0][-1]["role"] == "tool"  # the model saw the error


def test_max_tool_rounds_stops_the_loop():
    call = '{"tool": "lookup", "arguments": {"order_id": "A1"}}'
    agent, backend = agent_for([call] * 5, max_tool_rounds=2)
    turns = agent.respond(USER)
    assert [t.role for t in turns] == ["assistant", "tool"] * 2 + ["assistant"]
    assert turns[-1].metadata["stop_reason"] == "max_tool_rounds"
    assert len(backend.calls) == 3


def test_generate_response_returns_the_final_answer():
    agent, _ = agent_for(
        ['{"tool": "lookup", "arguments": {"order_id": "A1"}}', "Shipped."]
    )
    assert agent.generate_response(USER) == "Shipped."


def test_two_calls_in_one_round():
    agent, _ = agent_for(
        [
            '[{"tool": "lookup", "arguments": {"order_id": "A1"}}, '
            '{"tool": "nope", "arguments": {}}]',
            "done",
        ]
    )
    turns = agent.respond(USER)
    assert [t.role for t in turns] == ["assistant", "tool", "tool", "assistant"]
    assert [t.tool_call_id for t in turns[1:3]] == ["call_0", "call_1"]
    assert [t.metadata["ok"] for t in turns[1:3]] == [True, False]
