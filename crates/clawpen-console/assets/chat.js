// clawpen console: the chat with an agent, over OpenClaw's gateway protocol (version 4) on a
// WebSocket at /gateway/connect. Our own code, no libraries, no eval; every text from the
// agent or the person goes into the page with textContent only.
"use strict";
(() => {
  const section = document.getElementById("chat");
  if (!section) return;
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const abort = document.getElementById("chat-abort");
  const status = document.getElementById("chat-status");
  if (!log || !form || !input || !abort || !status) return;

  const SESSION = "agent:main:main";
  const PROTOCOL = 4;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/gateway/connect?" + (section.dataset.gatewayQuery || "");

  let ws = null;
  let ready = false;        // hello-ok received on the current socket
  let retried = false;      // reconnected once already since the last good connection
  let giveUp = false;       // the gateway refused us: do not reconnect
  const pending = new Map(); // request id -> {resolve, reject}
  const runs = new Map();    // runId -> {li, text, done}
  let activeRun = null;

  // ---- helpers ----

  function uuid() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    // Outside a secure context randomUUID is missing; getRandomValues is not.
    const b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // A message's content: a plain string, or an array of parts of which the text ones count.
  function textOf(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content.map((part) => {
        if (typeof part === "string") return part;
        if (part && (part.type === "text" || part.type === undefined) && typeof part.text === "string") return part.text;
        return "";
      }).join("");
    }
    if (content && typeof content.text === "string") return content.text;
    return "";
  }

  function messageText(message) {
    if (!message) return "";
    if (typeof message === "string") return message;
    return textOf(message.content !== undefined ? message.content : message.text);
  }

  function setStatus(text) { status.textContent = text; }

  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }

  function addLi(classes, text) {
    const stick = atBottom();
    const li = document.createElement("li");
    li.className = "msg " + classes;
    li.textContent = text;
    log.appendChild(li);
    if (stick) log.scrollTop = log.scrollHeight;
    return li;
  }

  function keepScrolled(fn) {
    const stick = atBottom();
    fn();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function setEnabled(on) {
    input.disabled = !on;
    if (send) send.disabled = !on;
  }

  function setActiveRun(runId) {
    activeRun = runId;
    abort.hidden = !runId;
    abort.disabled = !runId;
  }

  // ---- requests ----

  function request(method, params) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const id = uuid();
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ type: "req", id, method, params }));
    });
  }

  function failPending(reason) {
    for (const p of pending.values()) p.reject(new Error(reason));
    pending.clear();
  }

  function errorText(err) {
    if (!err) return "unknown error";
    if (typeof err === "string") return err;
    return err.message || err.code || "unknown error";
  }

  // ---- the connection ----

  function connect() {
    ready = false;
    setStatus("Connecting…");
    let socket;
    try { socket = new WebSocket(url); } catch (e) { setStatus("Disconnected — reload the page"); return; }
    ws = socket;
    socket.addEventListener("message", (ev) => { if (socket === ws) onFrame(ev.data); });
    socket.addEventListener("close", () => { if (socket === ws) onClose(); });
    socket.addEventListener("error", () => { /* a close follows */ });
  }

  function onClose() {
    ws = null;
    ready = false;
    setEnabled(false);
    setActiveRun(null);
    failPending("the connection closed");
    if (giveUp) return;
    if (!retried) {
      retried = true;
      setStatus("Connection lost — reconnecting…");
      window.setTimeout(connect, 1000);
    } else {
      setStatus("Disconnected — reload the page");
    }
  }

  function onFrame(data) {
    if (typeof data !== "string") return;
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "res") {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.payload || {}); else p.reject(new Error(errorText(msg.error)));
    } else if (msg.type === "event") {
      if (msg.event === "connect.challenge") onChallenge();
      else if (msg.event === "chat") onChat(msg.payload || {});
      // "agent", "tick", "health", "presence" … are not the chat's business.
    }
  }

  function onChallenge() {
    request("connect", {
      minProtocol: PROTOCOL,
      maxProtocol: PROTOCOL,
      client: { id: "clawpen-console", displayName: "clawpen console", version: "1.0.0", platform: "web", mode: "webchat" },
      role: "operator",
      scopes: ["operator.read", "operator.write"],
      caps: [],
    }).then(() => {
      ready = true;
      retried = false;
      setStatus("Connected");
      setEnabled(true);
      loadHistory();
    }, (err) => {
      giveUp = true;
      setStatus("Could not connect: " + err.message);
      if (ws) ws.close();
    });
  }

  function loadHistory() {
    request("chat.history", { sessionKey: SESSION, limit: 50 }).then((payload) => {
      const messages = Array.isArray(payload.messages) ? payload.messages : [];
      const items = [];
      for (const m of messages) {
        if (!m || (m.role !== "user" && m.role !== "assistant")) continue;
        const text = messageText(m);
        if (!text) continue;
        items.push({ role: m.role, text, ts: m.timestamp });
      }
      // Oldest first, whichever order they came in.
      if (items.length > 1 && typeof items[0].ts === "number" && typeof items[items.length - 1].ts === "number" && items[0].ts > items[items.length - 1].ts) items.reverse();
      // Replies still streaming keep their <li>; the rest of the log is the history.
      const live = Array.from(runs.values()).filter((r) => !r.done).map((r) => r.li);
      log.textContent = "";
      for (const it of items) {
        const li = addLi(it.role, it.text);
        li.dataset.history = "1";
        if (typeof it.ts === "number" || typeof it.ts === "string") {
          const d = new Date(it.ts);
          if (!isNaN(d.getTime())) li.title = d.toLocaleString();
        }
      }
      for (const li of live) log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    }, (err) => {
      addLi("system error", "Could not load the conversation: " + err.message);
    });
  }

  // ---- chat events ----

  function runFor(runId) {
    let run = runs.get(runId);
    if (!run) {
      const li = addLi("assistant streaming", "");
      li.dataset.runId = runId;
      run = { li, text: "", done: false, fresh: true };
      runs.set(runId, run);
    }
    return run;
  }

  function finish(run, runId, state) {
    run.done = true;
    run.li.classList.remove("streaming");
    run.li.dataset.state = state;
    if (activeRun === runId) setActiveRun(null);
  }

  function onChat(p) {
    const runId = typeof p.runId === "string" ? p.runId : "";
    if (!runId) return;
    const sk = p.sessionKey;
    if (sk && sk !== SESSION && sk !== "main") return;
    const known = runs.get(runId);
    if (known && known.done) return;
    const run = runFor(runId);
    const fresh = run.fresh;
    run.fresh = false;
    keepScrolled(() => {
      if (p.state === "delta") {
        if (fresh && p.message) run.text = messageText(p.message);
        else if (typeof p.deltaText === "string") run.text += p.deltaText;
        else if (p.message) run.text = messageText(p.message);
        run.li.textContent = run.text;
        if (!activeRun) setActiveRun(runId);
      } else if (p.state === "final") {
        const full = messageText(p.message);
        if (full) run.text = full;
        run.li.textContent = run.text;
        finish(run, runId, "final");
      } else if (p.state === "error") {
        run.li.classList.add("error");
        run.li.textContent = p.errorMessage || "The agent could not answer.";
        finish(run, runId, "error");
      } else if (p.state === "aborted") {
        run.li.classList.add("aborted");
        run.li.textContent = (run.text ? run.text + " " : "") + "(stopped)";
        finish(run, runId, "aborted");
      }
    });
  }

  // ---- sending and stopping ----

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !ready) return;
    const li = addLi("user", text); // data-run-id is the reply's alone
    log.scrollTop = log.scrollHeight;
    input.value = "";
    request("chat.send", { sessionKey: SESSION, message: text, idempotencyKey: uuid() }).then((payload) => {
      const runId = payload && payload.runId;
      if (typeof runId !== "string") return;
      const run = runs.get(runId);
      if (!run || !run.done) setActiveRun(runId);
    }, (err) => {
      li.classList.add("error");
      addLi("system error", "Not sent: " + err.message);
    });
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (typeof form.requestSubmit === "function") form.requestSubmit(); else form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });

  abort.addEventListener("click", () => {
    const runId = activeRun;
    if (!runId) return;
    abort.disabled = true;
    request("chat.abort", { sessionKey: SESSION, runId }).catch((err) => {
      abort.disabled = activeRun !== runId;
      setStatus("Could not stop: " + err.message);
    });
  });

  connect();
})();
