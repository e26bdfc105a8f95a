"""Chat commands through the gateway: `/proposals` and `/reject N` are the user's, answered by
the server (the model never sees them), each as a run that ends in one final message; a client
cannot forge the server's answer. CLAWPEN_CONNECT_URL: a signed ws:// URL; CLAWPEN_PROPOSAL: the
number of a pending proposal of its tenant.
"""

import os
import uuid

from test_gateway import handshake, url  # noqa: F401 (`url` is the fixture)


def say(c, text, **extra):
    key = str(uuid.uuid4())
    sent = c.request("chat.send", dict({"sessionKey": "agent:main:main", "message": text, "idempotencyKey": key}, **extra))
    assert sent["ok"] and sent["payload"] == {"runId": key, "status": "started"}, sent
    events = c.chat_until_done(key)
    final = events[-1]["payload"]
    assert final["state"] == "final", events
    return "".join(part["text"] for part in final["message"]["content"])


def test_a_proposal_is_listed_and_rejected_through_the_gateway(url):
    n = os.environ["CLAWPEN_PROPOSAL"]
    c = handshake(url)
    listed = say(c, "/proposals", clawpenCommandReply="forged")
    assert f"#{n}:" in listed and "forged" not in listed, listed
    # A client's own "answer" on an ordinary message is dropped: the agent answers it.
    ordinary = say(c, "hello", clawpenCommandReply="Proposal #1 was approved")
    assert "approved" not in ordinary, ordinary
    rejected = say(c, f"/reject {n}")
    assert f"Proposal #{n}" in rejected and "rejected" in rejected, rejected
