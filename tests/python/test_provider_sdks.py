"""The meter's three OpenAI-compatible providers besides OpenAI (Gemini, DeepSeek, xAI's Grok),
each driven by the real OpenAI Python SDK over an agent's control socket, in a run the server
opened. The meter routes each model to its provider's stand-in endpoint, which answers with that
provider's own usage fields (cached tokens and reasoning tokens where each one puts them). Every
call must be charged, to the micro-credit, what that provider bills for the usage it reported.

Prices of the test models (micro-credits per million tokens): 1 per input token, 2 per output
token, 0.5 per cache read; each part rounded up.
"""

import openai
import pytest

from meter_api import last_call, openai_client, up, usage

HELLO = [{"role": "user", "content": "hello there provider"}]


def billed(provider, u):
    """(input, output, cache read) as each provider bills the usage it reported."""
    prompt, completion = u["prompt_tokens"], u["completion_tokens"]
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    if provider == "deepseek":
        # prompt_cache_hit_tokens + prompt_cache_miss_tokens == prompt_tokens; reasoning is
        # inside completion_tokens.
        assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == prompt
        return u["prompt_cache_miss_tokens"], completion, u["prompt_cache_hit_tokens"]
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    if provider == "xai":
        # Reasoning beside completion_tokens; total_tokens is the sum of the three.
        assert u["total_tokens"] == prompt + completion + reasoning
        return prompt - cached, completion + reasoning, cached
    if provider == "gemini":
        # Thinking is billed as output and counted in total_tokens.
        return prompt - cached, u["total_tokens"] - prompt, cached
    raise AssertionError(provider)


def cost(provider, u):
    i, o, c = billed(provider, u)
    return up(i, 1_000_000) + up(o, 2_000_000) + up(c, 500_000)


MODELS = [
    # (model offered by the meter, provider, thinks, reads from the cache)
    ("gemini-lite", "gemini", False, False),
    ("gemini-think", "gemini", True, True),
    ("deepseek-chat", "deepseek", False, True),
    ("deepseek-reasoner", "deepseek", True, True),
    ("grok-fast", "xai", False, False),
    ("grok-mini", "xai", True, True),
]


@pytest.fixture
def oai(control_sock, run_id):
    return openai_client(control_sock, run_id)


@pytest.mark.parametrize("model,provider,thinks,cached", MODELS)
def test_a_plain_call_is_charged_what_its_provider_bills(oai, clawpen_api, model, provider, thinks, cached):
    before = usage(clawpen_api)["balance"]
    r = oai.chat.completions.create(model=model, messages=HELLO, max_tokens=60)
    assert r.choices[0].message.content.startswith("stand-in reply")
    u = r.usage.model_dump()
    # The provider's own fields reach the SDK as the provider sent them.
    if provider == "deepseek":
        assert "prompt_cache_hit_tokens" in u, u
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    assert (reasoning > 0) == thinks, u
    c = last_call(clawpen_api)
    assert (c["model"], c["outcome"], c["stream"]) == (model, "ok", False)
    i, o, read = billed(provider, u)
    assert (c["input_tokens"], c["output_tokens"], c["cache_read_tokens"]) == (i, o, read), (c, u)
    assert (read > 0) == cached, u
    assert c["cost"] == cost(provider, u) > 0
    assert usage(clawpen_api)["balance"] == before - c["cost"]


@pytest.mark.parametrize("model,provider,thinks,cached", MODELS)
def test_a_streamed_call_is_charged_from_its_usage_chunk(oai, clawpen_api, model, provider, thinks, cached):
    chunks = list(oai.chat.completions.create(model=model, messages=HELLO, max_tokens=60, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.startswith("stand-in reply")
    u = next(ch.usage for ch in chunks if ch.usage is not None).model_dump()
    c = last_call(clawpen_api)
    assert (c["model"], c["outcome"], c["stream"]) == (model, "ok", True)
    assert (c["input_tokens"], c["output_tokens"], c["cache_read_tokens"]) == billed(provider, u), (c, u)
    assert c["cost"] == cost(provider, u) > 0


def test_a_model_the_meter_does_not_offer_is_refused_with_the_list(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gemini-ultra-unlisted", messages=HELLO, max_tokens=5)
    assert "not offered" in str(e.value) and "grok-mini" in str(e.value)
