"""Fixtures for the SDK tests.

The stand-in: CLAWPEN_STANDIN_URL when a running one is given (the Rust test that runs this suite
passes its in-process stand-in), else one process started from the command line in
CLAWPEN_STANDIN_CMD. The meter: CLAWPEN_CONTROL_SOCK (an agent's control socket on a running
server whose meter reaches that stand-in), CLAWPEN_RUN_ID (a run the server opened for that
agent: the meter takes model calls only inside one), CLAWPEN_URL and CLAWPEN_TENANT_KEY (that
agent's tenant, for the usage API). Missing settings fail the tests: they never skip.
"""

import os
import shlex
import subprocess
import time

import pytest


@pytest.fixture(scope="session")
def standin_url(tmp_path_factory):
    given = os.environ.get("CLAWPEN_STANDIN_URL")
    if given:
        yield given
        return
    cmd = os.environ.get("CLAWPEN_STANDIN_CMD")
    if not cmd:
        # Failing, not skipping: a run that silently tested nothing would look green.
        pytest.fail(
            "CLAWPEN_STANDIN_CMD is not set; build the stand-in with "
            "`cargo build -p clawpen-standin --example standin` and set it to "
            "target/x86_64-unknown-linux-gnu/debug/examples/standin"
        )
    addr_file = tmp_path_factory.mktemp("standin") / "addr"
    proc = subprocess.Popen(
        shlex.split(cmd) + ["--listen", "127.0.0.1:0", "--addr-file", str(addr_file)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not addr_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"the stand-in exited with {proc.returncode} before listening")
            if time.monotonic() > deadline:
                pytest.fail("the stand-in did not write its address within 30 s")
            time.sleep(0.05)
        yield "http://" + addr_file.read_text().strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _required(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set; run these tests through `cargo test -p clawpen --test it python`")
    return value


@pytest.fixture(scope="session")
def control_sock():
    return _required("CLAWPEN_CONTROL_SOCK")


@pytest.fixture(scope="session")
def run_id():
    return _required("CLAWPEN_RUN_ID")


@pytest.fixture(scope="session")
def clawpen_api():
    return _required("CLAWPEN_URL"), _required("CLAWPEN_TENANT_KEY")
