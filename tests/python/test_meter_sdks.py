"""The meter driven by the real OpenAI and Anthropic Python SDKs, as code inside a sandbox would
drive it: over the agent's control socket, with no provider key (whatever key the client sends is
dropped; the meter adds the platform's), in a run the server opened (`x-clawpen-run`). Each call
must come back in the SDK's own types and show up in the usage API at the exact price of the usage
the provider reported.

Prices of the test models (micro-credits per million tokens): 1 per input token, 2 per output
token, 0.5 per cache read, 1.25 per cache write, each part rounded up.
"""

import json

import anthropic
import openai
import pytest

from meter_api import INSIDE_KEY, last_call, openai_client, uds_client, up, usage

HELLO = [{"role": "user", "content": "hello there meter"}]
HELLO_REPLY = "stand-in reply to: hello there meter"


def cost(input_tokens, output_tokens, cache_read=0, cache_write=0):
    return up(input_tokens, 1_000_000) + up(output_tokens, 2_000_000) + up(cache_read, 500_000) + up(cache_write, 1_250_000)


@pytest.fixture
def oai(control_sock, run_id):
    return openai_client(control_sock, run_id)


@pytest.fixture
def ant(control_sock, run_id):
    return anthropic.Anthropic(api_key=INSIDE_KEY, base_url="http://meter", http_client=uds_client(control_sock), max_retries=0, default_headers={"x-clawpen-run": run_id})


def test_openai_plain_is_charged_from_its_usage(oai, clawpen_api):
    before = usage(clawpen_api)["balance"]
    r = oai.chat.completions.create(model="gpt-test", messages=HELLO, max_tokens=40)
    assert r.choices[0].message.content == HELLO_REPLY
    assert r.choices[0].finish_reason == "stop"
    c = last_call(clawpen_api)
    assert (c["model"], c["outcome"], c["stream"]) == ("gpt-test", "ok", False)
    assert (c["input_tokens"], c["output_tokens"]) == (r.usage.prompt_tokens, r.usage.completion_tokens)
    assert c["cost"] == cost(r.usage.prompt_tokens, r.usage.completion_tokens) > 0
    assert usage(clawpen_api)["balance"] == before - c["cost"]


def test_openai_stream_without_usage_is_still_charged(oai, clawpen_api):
    chunks = list(oai.chat.completions.create(model="gpt-test", messages=HELLO, stream=True, max_tokens=40))
    # The caller did not ask for usage: the meter asked upstream for it and stripped it again.
    assert all(ch.usage is None and len(ch.choices) == 1 for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == HELLO_REPLY
    c = last_call(clawpen_api)
    assert (c["outcome"], c["stream"], c["output_tokens"]) == ("ok", True, 6)
    assert c["cost"] == cost(c["input_tokens"], 6) > 0


def test_openai_stream_with_usage_keeps_its_usage_chunk(oai, clawpen_api):
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}, max_tokens=40
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    c = last_call(clawpen_api)
    assert (c["input_tokens"], c["output_tokens"]) == (last.usage.prompt_tokens, last.usage.completion_tokens)
    assert c["cost"] == cost(last.usage.prompt_tokens, last.usage.completion_tokens)


def test_openai_cached_input_is_priced_as_cache_reads(oai, clawpen_api):
    r = oai.chat.completions.create(model="gpt-cached", messages=HELLO, max_tokens=40)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached > 0
    c = last_call(clawpen_api)
    assert c["cache_read_tokens"] == cached
    # OpenAI counts cached tokens inside prompt_tokens: only the rest is charged at the input rate.
    assert c["cost"] == cost(r.usage.prompt_tokens - cached, r.usage.completion_tokens, cache_read=cached)


def test_openai_streamed_tool_call_reaches_the_sdk(oai):
    tools = [{"type": "function", "function": {"name": "remember", "parameters": {"type": "object", "properties": {"fact": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": '/tool remember {"fact": "milk"}'}]
    with oai.chat.completions.stream(model="gpt-test", messages=messages, tools=tools, max_tokens=40) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("remember", {"fact": "milk"})


def test_openai_unknown_model_is_a_clear_400_and_free(oai, clawpen_api):
    before = usage(clawpen_api)["balance"]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-9000", messages=HELLO)
    assert "gpt-test" in str(e.value), "the error names the models on offer"
    assert usage(clawpen_api)["balance"] == before


def test_anthropic_plain_is_charged_with_its_cache_figures(ant, clawpen_api):
    m = ant.messages.create(model="claude-cached", max_tokens=40, messages=[{"role": "user", "content": "one two three four five six seven eight nine ten eleven twelve thirteen"}])
    u = m.usage
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (10, 5)
    c = last_call(clawpen_api)
    assert (c["provider"], c["outcome"]) == ("anthropic", "ok")
    assert (c["input_tokens"], c["output_tokens"], c["cache_read_tokens"], c["cache_write_tokens"]) == (u.input_tokens, u.output_tokens, 10, 5)
    assert c["cost"] == cost(u.input_tokens, u.output_tokens, 10, 5)


def test_anthropic_stream_is_charged_from_message_start_and_the_last_delta(ant, clawpen_api):
    with ant.messages.stream(model="claude-test", max_tokens=40, system="be brief", messages=[{"role": "user", "content": "hi claude"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "stand-in reply to: hi claude"
    c = last_call(clawpen_api)
    assert (c["stream"], c["input_tokens"], c["output_tokens"]) == (True, final.usage.input_tokens, final.usage.output_tokens)
    assert c["cost"] == cost(final.usage.input_tokens, final.usage.output_tokens)


def test_a_call_outside_the_run_is_refused(control_sock):
    rogue = openai_client(control_sock, "run-of-my-own")
    with pytest.raises(openai.PermissionDeniedError) as e:
        rogue.chat.completions.create(model="gpt-test", messages=HELLO)
    assert "a run the server started" in str(e.value)


def test_anthropic_max_tokens_over_the_plan_is_clamped(ant, clawpen_api):
    # The plan's max tokens per request bounds the call (the Rust side checks what upstream got).
    m = ant.messages.create(model="claude-test", max_tokens=20_000, messages=[{"role": "user", "content": "clamp me"}])
    assert m.content[0].text == "stand-in reply to: clamp me"
    assert last_call(clawpen_api)["cost"] == cost(m.usage.input_tokens, m.usage.output_tokens)
