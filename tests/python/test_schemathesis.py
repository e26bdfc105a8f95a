"""Schemathesis against a running clawpen server: every response must be one the OpenAPI
document at /api/openapi.json declares (status, content type, headers, body schema), and none
may be a 5xx.

It runs twice, first with a tenant API key and then with the admin token, each pass over every
operation (so a tenant key on an admin route, and the admin token on a tenant route, are checked
too). The tenant pass goes first: the admin pass may delete that tenant or drain a node, and it
ends every drain it started. Settings: CLAWPEN_URL, CLAWPEN_TENANT_KEY, CLAWPEN_ADMIN_TOKEN;
CLAWPEN_SCHEMATHESIS_EXAMPLES (examples per operation, default 10) and CLAWPEN_SCHEMATHESIS_SEED
to replay a run. Missing settings fail the tests: they never skip. The Rust test
`cargo test -p clawpen --test it openapi::` starts a server and runs this file.

Operations that start agents create real sandboxes: the server that runs this removes them.
"""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # Refusing a request the document allows is a mismatch too (a plan or a name it declares).
    "positive_data_acceptance",
]


def _required(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set; run this through `cargo test -p clawpen --test it openapi::`")
    return value


def _schemathesis(tmp_path, token_env):
    """Runs `schemathesis run` with the token from `token_env`; returns its exit code and report."""
    url = _required("CLAWPEN_URL").rstrip("/")
    _required(token_env)
    # The token stays out of the command line (and schemathesis' report filters it).
    config = tmp_path / "schemathesis.toml"
    # An import's body is a .tar.gz: the document can say so, not what makes one valid, so a
    # generated body is refused as a damaged (422) or oversized (413) archive, as it should be.
    config.write_text(
        f'[headers]\nAuthorization = "Bearer ${{{token_env}}}"\n\n'
        '[[operations]]\ninclude-path-regex = "/import$"\n'
        '[operations.checks.positive_data_acceptance]\n'
        'expected-statuses = ["2xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]\n\n'
        # A schedule's timing (a cron expression, a time zone, the plan's shortest interval, a
        # paired Telegram person), a provider key (the provider checks it) and a bot token
        # (Telegram checks it) are valid or not by what the document can name but not decide: a
        # 422 that says why is the right answer.
        '[[operations]]\ninclude-path-regex = "(/schedules|/provider-keys/[^/]+|/telegram/bot)$"\n'
        '[operations.checks.positive_data_acceptance]\n'
        'expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]\n\n'
        # DELETE /account purges the tenant whose key this run uses, and with it the run's
        # subject: it has its own test (it::transfer, the purge).
        '[[operations]]\ninclude-path = "/api/v1/account"\nenabled = false\n'
    )
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{url}/api/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", os.environ.get("CLAWPEN_SCHEMATHESIS_EXAMPLES", "10"),
        # One worker: the engine's threads race in Hypothesis' lambda descriptions on Python 3.11,
        # and the requests of one pass do not race each other's agents.
        "--workers", "1",
        "--request-timeout", "120",
        "--no-color",
    ]
    seed = os.environ.get("CLAWPEN_SCHEMATHESIS_SEED")
    if seed:
        cmd += ["--seed", seed]
    # In the temp dir: schemathesis keeps a cache (`.schemathesis/`) where it runs.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = out.stdout + out.stderr
    # What ran, for the log of a passing run too (pytest -rP shows it).
    summary = report[report.find("SUMMARY"):] if "SUMMARY" in report else report[-4000:]
    print(f"schemathesis with {token_env}, checks {', '.join(CHECKS)}:\n{summary}")
    return out.returncode, report


def _admin(method, path):
    req = urllib.request.Request(
        _required("CLAWPEN_URL").rstrip("/") + path,
        method=method,
        headers={"Authorization": f"Bearer {_required('CLAWPEN_ADMIN_TOKEN')}"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read() or b"null")


def test_every_response_is_documented_with_a_tenant_key(tmp_path):
    code, report = _schemathesis(tmp_path, "CLAWPEN_TENANT_KEY")
    assert code == 0, report
    assert " passed" in report, report


def test_every_response_is_documented_with_the_admin_token(tmp_path):
    drained_before = {n["name"] for n in _admin("GET", "/api/v1/nodes")["nodes"] if n["state"] == "draining"}
    try:
        code, report = _schemathesis(tmp_path, "CLAWPEN_ADMIN_TOKEN")
    finally:
        # The pass may drain a node (a real id is easy to hit: `local`); leave the fleet as found.
        for n in _admin("GET", "/api/v1/nodes")["nodes"]:
            if n["state"] == "draining" and n["name"] not in drained_before:
                _admin("DELETE", f"/api/v1/nodes/{n['name']}/drain")
    assert code == 0, report
    assert " passed" in report, report
