"""A real OpenClaw client from PyPI, `openclaw-sdk` (its `ProtocolGateway`), against a clawpen
connect URL: connect, send a message, receive the reply streamed token by token, read the
history and the sessions. CLAWPEN_CONNECT_URL is a signed ws:// URL for one running agent
whose model is the stand-in (replies "stand-in reply to: <message>").

Two ways in, as an operator would use the SDK:
- the SDK as shipped (protocol 3): it sends `connect` only with a device identity under
  ~/.openclaw/identity, so the test gives it one in a temporary HOME (an Ed25519 key; clawpen's
  signed URL is the credential, the device signature is not needed and not checked);
- `ProtocolGateway` with its challenge handler answering protocol 4 and no device (the SDK
  hard-codes 3 and skips `connect` without device files; see docs/openclaw/CLIENTS.md).
"""

import asyncio
import json
import os
import platform
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openclaw_sdk import ClientConfig, OpenClawClient
from openclaw_sdk.gateway.protocol import ProtocolGateway


@pytest.fixture
def url():
    value = os.environ.get("CLAWPEN_CONNECT_URL")
    if not value:
        pytest.fail("CLAWPEN_CONNECT_URL is not set; run through `cargo test -p clawpen --test it gateway`")
    return value


class V4Gateway(ProtocolGateway):
    """The SDK's gateway, answering `connect.challenge` with protocol 4 and no device."""

    async def _handle_challenge(self, payload: dict[str, Any]) -> None:
        req_id = self._next_id()
        self._connect_req_id = req_id
        self._pending[req_id] = asyncio.get_running_loop().create_future()
        await self._send_json({
            "type": "req", "id": req_id, "method": "connect",
            "params": {
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "cli", "version": "2.1.0", "platform": platform.system().lower() or "unknown", "mode": "cli"},
                "role": "operator", "scopes": ["operator.read", "operator.write"], "caps": [],
                "locale": "en-US", "userAgent": "openclaw-sdk/2.1.0",
            },
        })


def device_home(tmp_path):
    """A HOME with the device identity the stock SDK wants before it sends `connect`."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    ident = tmp_path / ".openclaw" / "identity"
    ident.mkdir(parents=True)
    (ident / "device.json").write_text(json.dumps({"deviceId": "dev-" + uuid.uuid4().hex[:12], "privateKeyPem": private, "publicKeyPem": public}))
    (ident / "device-auth.json").write_text(json.dumps({"tokens": {"operator": {"token": "", "role": "operator", "scopes": ["operator.read", "operator.write"]}}}))
    return tmp_path


async def a_conversation(gw, url, message):
    await gw.connect()
    client = OpenClawClient(config=ClientConfig(mode="protocol", gateway_ws_url=url), gateway=gw)
    agent = client.get_agent("main")
    pieces = []
    async for ev in await agent.execute_stream(message):
        payload = ev.data.get("payload") or {}
        if ev.data.get("event") == "agent" and payload.get("stream") == "assistant":
            pieces.append((payload.get("data") or {}).get("delta", ""))
    again = await agent.execute(message + " again")
    history = await gw.chat_history(agent.session_key, limit=50)
    sessions = await gw.sessions_list()
    await client.close()
    return pieces, again, history, sessions


def check(pieces, again, history, sessions, message):
    assert len(pieces) > 3, f"the reply streamed in pieces: {pieces}"
    assert "".join(pieces) == f"stand-in reply to: {message}", pieces
    assert again.success, again
    assert again.content == f"stand-in reply to: {message} again", again
    texts = [m["content"][0]["text"] for m in history]
    assert message in texts and f"stand-in reply to: {message}" in texts, texts
    assert all(isinstance(m["timestamp"], int) for m in history)
    assert "agent:main:main" in [s["key"] for s in sessions], sessions


def test_the_sdk_as_shipped_speaks_protocol_3(url, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(device_home(tmp_path)))
    message = "hello from the stock sdk"
    pieces, again, history, sessions = asyncio.run(a_conversation(ProtocolGateway(url, token=""), url, message))
    check(pieces, again, history, sessions, message)


def test_the_sdk_speaks_protocol_4(url, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    message = "hello from protocol four"
    pieces, again, history, sessions = asyncio.run(a_conversation(V4Gateway(url, token=""), url, message))
    check(pieces, again, history, sessions, message)
