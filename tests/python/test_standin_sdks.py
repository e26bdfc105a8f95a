"""The stand-in against the real OpenAI and Anthropic Python SDKs.

Token counts follow the rules in crates/clawpen-standin/README.md: a token is a word; input is
the words of every message plus 4 per message (plus Anthropic's `system`); the reply is
"stand-in reply to: <last user text>".
"""

import json

import anthropic
import openai
import pytest

OPENAI_KEY = "sk-standin-openai"
ANTHROPIC_KEY = "sk-ant-standin"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there meter"}]
HELLO_INPUT = (2 + 4) + (3 + 4)
HELLO_REPLY = "stand-in reply to: hello there meter"


@pytest.fixture
def oai(standin_url):
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=standin_url + "/v1", max_retries=0)


@pytest.fixture
def ant(standin_url):
    return anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=standin_url, max_retries=0)


def test_openai_chat_reports_usage(oai):
    r = oai.chat.completions.create(model="gpt-test", messages=HELLO)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == HELLO_REPLY
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (HELLO_INPUT, 6, HELLO_INPUT + 6)
    assert u.prompt_tokens_details.cached_tokens == 0
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_openai_cached_model_reports_cached_tokens(oai):
    r = oai.chat.completions.create(model="gpt-cached", messages=HELLO)
    assert r.usage.prompt_tokens == HELLO_INPUT
    assert r.usage.prompt_tokens_details.cached_tokens == 10


def test_openai_max_completion_tokens_cuts_the_reply(oai):
    r = oai.chat.completions.create(model="gpt-test", messages=HELLO, max_completion_tokens=2)
    assert r.choices[0].message.content == "stand-in reply"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_openai_stream_with_usage_ends_with_a_usage_chunk(oai):
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    *rest, last = chunks
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (HELLO_INPUT, 6)
    assert all(c.usage is None for c in rest)
    assert "".join(c.choices[0].delta.content or "" for c in rest) == HELLO_REPLY
    assert rest[-1].choices[0].finish_reason == "stop"


def test_openai_stream_without_usage_has_none(oai):
    chunks = list(oai.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == HELLO_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"


TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
TOOL_CALL = [{"role": "user", "content": '/tool read {"path": "notes.txt"}'}]


def test_openai_scripted_tool_call(oai):
    r = oai.chat.completions.create(model="gpt-test", messages=TOOL_CALL, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "read"
    assert json.loads(call.function.arguments) == {"path": "notes.txt"}
    assert r.usage.completion_tokens == 2 + 1
    messages = TOOL_CALL + [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "buy milk"}]
    r = oai.chat.completions.create(model="gpt-test", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "tool result: buy milk"


def test_openai_streamed_tool_call_accumulates_in_the_sdk(oai):
    with oai.chat.completions.stream(model="gpt-test", messages=TOOL_CALL, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "read"
    assert json.loads(call.function.arguments) == {"path": "notes.txt"}


def test_openai_wrong_key_raises_authentication_error(standin_url):
    client = openai.OpenAI(api_key="sk-wrong", base_url=standin_url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="gpt-test", messages=HELLO)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


CLAUDE = {"max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hi claude"}]}
CLAUDE_INPUT = 2 + (2 + 4)


def test_anthropic_message_reports_usage(ant):
    m = ant.messages.create(model="claude-test", **CLAUDE)
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == "stand-in reply to: hi claude"
    assert m.stop_reason == "end_turn"
    u = m.usage
    assert (u.input_tokens, u.output_tokens) == (CLAUDE_INPUT, 5)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (0, 0)


def test_anthropic_max_tokens_cuts_the_reply(ant):
    m = ant.messages.create(model="claude-test", **{**CLAUDE, "max_tokens": 3})
    assert m.content[0].text == "stand-in reply to:"
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 3


def test_anthropic_stream_final_message_has_usage(ant):
    with ant.messages.stream(model="claude-test", **CLAUDE) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "stand-in reply to: hi claude" == final.content[0].text
    assert final.stop_reason == "end_turn"
    u = final.usage
    assert (u.input_tokens, u.output_tokens) == (CLAUDE_INPUT, 5)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (0, 0)


def test_anthropic_cached_model_streams_cache_figures(ant):
    long = "one two three four five six seven eight nine ten eleven twelve thirteen"
    with ant.messages.stream(model="claude-cached", max_tokens=50, messages=[{"role": "user", "content": long}]) as stream:
        final = stream.get_final_message()
    u = final.usage
    assert (u.input_tokens, u.output_tokens) == (13 + 4 - 15, 16)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (10, 5)
    plain = ant.messages.create(model="claude-cached", max_tokens=50, messages=[{"role": "user", "content": long}])
    assert plain.usage == u


def test_anthropic_wrong_key_raises_authentication_error(standin_url):
    client = anthropic.Anthropic(api_key="sk-ant-wrong", base_url=standin_url, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        client.messages.create(model="claude-test", **CLAUDE)
    assert e.value.status_code == 401
    assert e.value.body["error"]["type"] == "authentication_error"
