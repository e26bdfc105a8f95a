"""The gateway with a real WebSocket client (`websockets`), speaking OpenClaw's protocol: the
challenge, connect → hello-ok, chat.send → chat events, idempotency, history, health, errors.
CLAWPEN_CONNECT_URL is a signed ws:// URL for one running (or stopped: it is woken) agent.
"""

import json
import os
import uuid

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

CONNECT = {
    "minProtocol": 3, "maxProtocol": 4,
    "client": {"id": "test", "displayName": "clawpen tests", "version": "1.0.0", "platform": "linux", "mode": "test"},
    "role": "operator", "scopes": ["operator.read", "operator.write"], "caps": [],
}


@pytest.fixture
def url():
    value = os.environ.get("CLAWPEN_CONNECT_URL")
    if not value:
        pytest.fail("CLAWPEN_CONNECT_URL is not set; run through `cargo test -p clawpen --test it gateway`")
    return value


class Client:
    def __init__(self, ws):
        self.ws = ws
        self.events = []

    def recv(self):
        return json.loads(self.ws.recv(timeout=30))

    def request(self, method, params=None):
        rid = str(uuid.uuid4())
        self.ws.send(json.dumps({"type": "req", "id": rid, "method": method, "params": params or {}}))
        while True:
            frame = self.recv()
            if frame["type"] == "res" and frame["id"] == rid:
                return frame
            self.events.append(frame)

    def chat_until_done(self, run_id):
        seen = [e for e in self.events if e.get("event") == "chat" and e["payload"]["runId"] == run_id]
        while not any(e["payload"]["state"] in ("final", "error", "aborted") for e in seen):
            frame = self.recv()
            if frame["type"] == "event" and frame["event"] == "chat" and frame["payload"]["runId"] == run_id:
                seen.append(frame)
        return seen


def handshake(url, protocols=(3, 4)):
    ws = ws_connect(url, open_timeout=60)
    c = Client(ws)
    challenge = c.recv()
    assert challenge["type"] == "event" and challenge["event"] == "connect.challenge"
    assert len(challenge["payload"]["nonce"]) >= 16
    hello = c.request("connect", dict(CONNECT, minProtocol=protocols[0], maxProtocol=protocols[1]))
    assert hello["ok"] is True, hello
    assert hello["payload"]["type"] == "hello-ok"
    assert hello["payload"]["protocol"] == protocols[1]
    assert "chat.send" in hello["payload"]["features"]["methods"]
    return c


@pytest.mark.parametrize("protocol", [4, 3])
def test_handshake_and_a_chat_round_trip(url, protocol):
    c = handshake(url, (3, protocol))
    key = str(uuid.uuid4())
    sent = c.request("chat.send", {"sessionKey": "agent:main:main", "message": "hello gateway", "idempotencyKey": key})
    assert sent["ok"] and sent["payload"] == {"runId": key, "status": "started"}, sent
    run_id = sent["payload"]["runId"]
    events = c.chat_until_done(run_id)
    states = [e["payload"]["state"] for e in events]
    assert states[0] == "delta" and states[-1] == "final", states
    if protocol == 4:
        # v4 deltas append; together they are the reply.
        assert "".join(e["payload"]["deltaText"] for e in events[:-1]) == "stand-in reply to: hello gateway"
    final = events[-1]["payload"]
    assert final["message"]["content"][0]["text"] == "stand-in reply to: hello gateway"
    assert final["sessionKey"] == "agent:main:main"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)

    # The same idempotency key is the same run, not a second one.
    again = c.request("chat.send", {"sessionKey": "agent:main:main", "message": "hello gateway", "idempotencyKey": key})
    assert again["ok"] and again["payload"] == {"runId": run_id, "status": "ok"}, again

    history = c.request("chat.history", {"sessionKey": "agent:main:main", "limit": 10})
    texts = [m["content"][0]["text"] for m in history["payload"]["messages"]]
    assert "hello gateway" in texts and "stand-in reply to: hello gateway" in texts, texts
    assert all(isinstance(m["timestamp"], int) and m["timestamp"] > 0 for m in history["payload"]["messages"])

    sessions = c.request("sessions.list", {})
    assert "agent:main:main" in [r["key"] for r in sessions["payload"]["sessions"]], sessions

    health = c.request("health")
    assert health["ok"] and health["payload"]["ok"] is True
    c.ws.close()


def test_errors_are_frames_not_crashes(url):
    c = handshake(url)
    unknown = c.request("sessions.delete", {})
    assert unknown["ok"] is False and unknown["error"]["code"] == "INVALID_REQUEST"
    bad = c.request("chat.send", {"sessionKey": "../../etc", "message": "x", "idempotencyKey": "k"})
    assert bad["ok"] is False
    empty = c.request("chat.send", {"sessionKey": "main", "message": "   ", "idempotencyKey": "k2"})
    assert empty["ok"] is False and empty["error"]["message"] == "message or attachment required"
    keyless = c.request("chat.send", {"sessionKey": "main", "message": "hi"})
    assert keyless["ok"] is False and "idempotencyKey" in keyless["error"]["message"]
    # Still connected and answering.
    assert c.request("health")["ok"] is True
    c.ws.close()


def test_connect_must_come_first(url):
    ws = ws_connect(url, open_timeout=60)
    c = Client(ws)
    assert c.recv()["event"] == "connect.challenge"
    res = c.request("health")
    assert res["ok"] is False
    with pytest.raises(Exception):
        for _ in range(5):
            ws.recv(timeout=10)
    assert ws.close_code == 1008


def test_a_version_in_common_or_a_mismatch_closed_with_1002(url):
    ws = ws_connect(url, open_timeout=60)
    c = Client(ws)
    assert c.recv()["event"] == "connect.challenge"
    res = c.request("connect", dict(CONNECT, minProtocol=5, maxProtocol=7))
    assert res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST" and res["error"]["message"] == "protocol mismatch", res
    assert res["error"]["details"]["expectedProtocol"] == 4
    with pytest.raises(Exception):
        for _ in range(5):
            ws.recv(timeout=10)
    assert ws.close_code == 1002


def test_a_large_frame_before_connect_is_refused(url):
    ws = ws_connect(url, open_timeout=60, max_size=None)
    assert json.loads(ws.recv(timeout=30))["event"] == "connect.challenge"
    ws.send(json.dumps({"type": "req", "id": "1", "method": "connect", "params": {"pad": "x" * 70000}}))
    with pytest.raises(Exception):
        ws.recv(timeout=10)
    assert ws.close_code == 1009


def test_a_tampered_url_is_refused_before_the_upgrade(url):
    # Point the grant at another agent: the signature no longer matches.
    tampered = url.replace("agent=ag_", "agent=ag_x", 1)[:-1]
    for bad in [tampered, url.replace("sig=", "sig=0"), url.split("&sig=")[0]]:
        with pytest.raises(InvalidStatus) as e:
            ws_connect(bad, open_timeout=30)
        assert e.value.response.status_code == 401
