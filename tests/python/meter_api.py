"""What the meter's SDK tests share: an SDK client on an agent's control socket, the price
rounding, and the usage API (`test_meter_sdks.py`, `test_provider_sdks.py`)."""

import json
import time
import urllib.request

import openai

try:  # The SDKs moved to httpx2; older ones use httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

# Whatever key a client inside the sandbox sends is dropped; the meter adds the platform's.
INSIDE_KEY = "sk-made-up-inside-the-sandbox"


def up(tokens, per_mtok):
    """Micro-credits for `tokens` at `per_mtok`, rounded up as the meter rounds."""
    return (tokens * per_mtok + 999_999) // 1_000_000


def uds_client(control_sock):
    return httpx.Client(transport=httpx.HTTPTransport(uds=control_sock))


def openai_client(control_sock, run_id):
    """The real OpenAI SDK over the control socket, in the run the server opened."""
    return openai.OpenAI(api_key=INSIDE_KEY, base_url="http://meter/v1", http_client=uds_client(control_sock), max_retries=0, default_headers={"x-clawpen-run": run_id})


def usage(clawpen_api):
    url, key = clawpen_api
    req = urllib.request.Request(url + "/api/v1/usage", headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def last_call(clawpen_api):
    """The newest call, once every hold is closed (a stream settles just after its last event)."""
    deadline = time.monotonic() + 10
    while True:
        u = usage(clawpen_api)
        if u["reserved"] == 0 or time.monotonic() > deadline:
            return u["recent_calls"][0]
        time.sleep(0.05)
