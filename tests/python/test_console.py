"""The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
by selenium): a member signs in, deploys an agent and sees "I'm live", chats and watches the reply
stream in, edits the persona and sees the next reply use it, forgets a memory line, sees the usage
chart move; the operator signs in and finds the agent and the spending. No page logs a console
error; every page is photographed under CLAWPEN_SCREENSHOTS.

CLAWPEN_BASE (http://127.0.0.1:PORT), CLAWPEN_EMAIL, CLAWPEN_PASSWORD, CLAWPEN_ADMIN_KEY.
"""

import os
import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set; run through `cargo test -p clawpen --test it console`")
    return value


@pytest.fixture
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    d.set_page_load_timeout(120)
    yield d
    d.quit()


class Console:
    def __init__(self, d):
        self.d = d
        self.base = env("CLAWPEN_BASE")
        self.shots = os.environ.get("CLAWPEN_SCREENSHOTS", "")
        self.errors = []

    def go(self, path):
        self.d.get(self.base + path)
        self.check_log()

    def wait(self, cond, secs=60):
        return WebDriverWait(self.d, secs).until(cond)

    def css(self, sel):
        return self.d.find_element(By.CSS_SELECTOR, sel)

    def all(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def submit(self, sel, confirm=False):
        self.css(sel).click()
        if confirm:
            self.wait(EC.alert_is_present(), 10).accept()

    def shot(self, name):
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.d.save_screenshot(os.path.join(self.shots, f"{name}.png"))
            self.d.set_window_size(390, 844)
            self.d.save_screenshot(os.path.join(self.shots, f"{name}-phone.png"))
            self.d.set_window_size(1200, 900)

    def check_log(self):
        for entry in self.d.get_log("browser"):
            if entry["level"] == "SEVERE":
                self.errors.append(f"{self.d.current_url}: {entry['message']}")

    def sign_in(self, email, password):
        self.go("/console")
        self.wait(EC.presence_of_element_located((By.ID, "login-form")))
        self.shot("login")
        self.css("#login-email").send_keys(email)
        self.css("#login-password").send_keys(password)
        self.submit("#login-submit")
        self.wait(EC.url_contains("/console/agents"))

    def reply_after(self, text):
        """Sends `text`; returns the reply's text and how many different lengths it was seen at."""
        before = len(self.all("#chat-log li.msg.assistant"))
        box = self.css("#chat-input")
        box.send_keys(text)
        self.css("#chat-send").click()
        seen = set()
        deadline = time.time() + 90
        while time.time() < deadline:
            replies = self.all("#chat-log li.msg.assistant")
            if len(replies) > before:
                li = replies[-1]
                seen.add(len(li.text))
                if li.get_attribute("data-state") == "final":
                    return li.text, seen
            time.sleep(0.02)
        pytest.fail(f"no final reply to {text!r}: {self.css('#chat-log').text}")


def bars(c):
    return sum(int(float(b.get_attribute("data-spent") or 0)) for b in c.all("svg#spend-chart rect.bar"))


def test_a_member_deploys_chats_edits_and_the_operator_sees_it(browser):
    c = Console(browser)
    c.sign_in(env("CLAWPEN_EMAIL"), env("CLAWPEN_PASSWORD"))
    c.shot("agents-empty")
    c.go("/console/usage")
    spent_before = bars(c)

    # Deploy: made and started in one press; the agent greets its owner.
    c.go("/console/agents")
    c.css("#deploy-name").send_keys("helper")
    c.submit("#deploy-submit")
    c.wait(EC.url_matches(r"/console/agents/ag_[a-z2-7]+$"), 180)
    c.wait(lambda d: any("I'm live" in li.text for li in c.all("#chat-log li.msg.assistant")), 60)
    c.wait(lambda d: "Connected" in c.css("#chat-status").text, 30)
    c.shot("agent")

    # Chat: the reply streams in (seen growing) and ends final.
    reply, lengths = c.reply_after("hello from the browser, tell me a long story about the sea")
    assert "stand-in reply to: hello from the browser" in reply, reply
    assert len(lengths) >= 2, f"the reply did not stream in: {lengths}"

    # Persona: edited, and the next reply follows it.
    soul = c.css("#persona-soul")
    soul.clear()
    soul.send_keys("# SOUL.md\n\nYou are a helpful assistant. Sign off as Captain Clawpen.\n")
    c.submit("#persona-save")
    c.wait(lambda d: c.all("#flash.ok"), 30)
    c.wait(lambda d: "Connected" in c.css("#chat-status").text, 30)
    reply, _ = c.reply_after("who are you")
    assert reply.endswith("— Captain Clawpen"), reply

    # Memory: the seeded line is there; forgotten, it is gone.
    lines = [li.find_element(By.CSS_SELECTOR, ".mem-text").text for li in c.all("#memory-lines li.memory-line")]
    assert "Long-term facts worth keeping." in lines, lines
    target = next(li for li in c.all("#memory-lines li.memory-line") if "Long-term facts worth keeping." in li.text)
    target.find_element(By.CSS_SELECTOR, "button").click()
    c.wait(EC.alert_is_present(), 10).accept()
    c.wait(lambda d: c.all("#flash.ok"), 30)
    lines = [li.text for li in c.all("#memory-lines li.memory-line")]
    assert not any("Long-term facts worth keeping." in t for t in lines), lines

    # Usage: the chart moved.
    c.go("/console/usage")
    c.wait(EC.presence_of_element_located((By.ID, "spend-chart")))
    assert bars(c) > spent_before, "the usage chart did not move"
    assert c.all("table#calls tr"), "the latest calls are listed"
    c.shot("usage")
    for page in ["integrations", "telegram", "members"]:
        c.go(f"/console/{page}")
        c.shot(page)

    # Sign out; the operator signs in and finds the agent and the spending.
    c.submit("#sign-out")
    c.wait(EC.presence_of_element_located((By.ID, "admin-login-form")))
    c.css("#admin-key").send_keys(env("CLAWPEN_ADMIN_KEY"))
    c.submit("#admin-login-submit")
    c.wait(EC.url_contains("/console/admin"))
    assert "helper" in c.css("#admin-agents-table").text
    spenders = c.css("#spenders-table").text
    assert "family" in spenders and "credits" in spenders, spenders
    c.shot("admin")
    for page in ["admin/tenants", "admin/audit"]:
        c.go(f"/console/{page}")
        c.shot(page.replace("/", "-"))
    c.check_log()
    assert not c.errors, "console errors:\n" + "\n".join(c.errors)
