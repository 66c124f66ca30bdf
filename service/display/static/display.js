// The reference handheld display: MQTT 5 over WebSockets to the device's broker (docs/mqtt.md,
// docs/mqtt/asyncapi.yaml). No framework, no build step: a display team can read it top to bottom.
//
// URL parameters: broker (ws:// or wss:// URL), device (the [device] id), username; the password is
// asked for in the form and never put in the URL. record=1 keeps every received message in
// window.sonoguideReceived (the browser tests check each one against the JSON Schemas in docs/mqtt/).
"use strict";

(function () {
  const ROOT = "sonoguide";
  const GAIN_STEPS = 3; // one press of gain ± moves this many of the probe's gain steps
  const REQUEST_TIMEOUT_MS = 5000;
  const DEFAULT_EXPIRY_S = 1; // the guidance topic's message expiry (docs/mqtt.md)
  const params = new URLSearchParams(location.search);
  const record = params.get("record") === "1";
  const $ = (id) => document.getElementById(id);

  const state = {
    connection: "connecting",
    available: "unknown",
    guidance: null, // last guidance message
    guidanceAt: 0, // ms (performance.now) it arrived
    guidanceStaleAt: 0, // ms after which it is stale (its MQTT 5 expiry)
    settings: null,
    settingsAt: 0,
    status: null,
    pending: new Map(), // correlation id -> {label, timer}
  };
  window.sonoguideDisplay = { state };
  if (record) window.sonoguideReceived = [];

  // --- configuration ------------------------------------------------------------------------------

  function config() {
    const saved = JSON.parse(localStorage.getItem("sonoguide-display") || "{}");
    return {
      broker: params.get("broker") || saved.broker || "",
      device: params.get("device") || saved.device || "",
      username: params.get("username") || saved.username || "",
      password: "",
    };
  }

  function askForConfig(cfg) {
    const form = $("connect-form");
    for (const k of ["broker", "device", "username"]) form.elements[k].value = cfg[k];
    form.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const chosen = Object.fromEntries(["broker", "device", "username", "password"].map((k) => [k, form.elements[k].value.trim()]));
      localStorage.setItem("sonoguide-display", JSON.stringify({ broker: chosen.broker, device: chosen.device, username: chosen.username }));
      form.hidden = true;
      start(chosen);
    }, { once: true });
  }

  // --- connection -----------------------------------------------------------------------------------

  let client = null;
  let root = "";
  let replyTopic = "";
  let account = ""; // the broker username, which commands name as their requester

  function start(cfg) {
    root = `${ROOT}/${cfg.device}`;
    account = cfg.username || "";
    $("device-name").textContent = cfg.device;
    const clientId = `display-${Math.random().toString(16).slice(2, 10)}`;
    // The broker's display ACL lets an account read replies under reply/<its username>/ only.
    replyTopic = `${root}/reply/${cfg.username || "display"}/${clientId}`;
    client = mqtt.connect(cfg.broker, {
      protocolVersion: 5,
      clientId,
      clean: true,
      username: cfg.username || undefined,
      password: cfg.password || undefined,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      keepalive: 10,
    });
    client.on("connect", () => {
      setConnection("connected");
      // Subscriptions are made on every connect: a clean session forgets them.
      const topics = ["available", "status", "settings", "guidance", "events"].map((t) => `${root}/${t}`);
      client.subscribe([...topics, replyTopic], { qos: 1 });
    });
    client.on("reconnect", () => setConnection("connecting"));
    client.on("close", () => setConnection("disconnected"));
    client.on("offline", () => setConnection("disconnected"));
    client.on("error", (err) => setConnection("error", err && err.message));
    client.on("message", onMessage);
  }

  function setConnection(value, detail) {
    state.connection = value;
    const badge = $("connection");
    badge.dataset.state = value;
    badge.textContent = {
      connecting: "broker: connecting…",
      connected: "broker: connected",
      disconnected: "broker: disconnected",
      error: `broker: error${detail ? ` (${detail})` : ""}`,
    }[value];
    render();
  }

  // --- messages -------------------------------------------------------------------------------------

  function onMessage(topic, payload, packet) {
    const text = new TextDecoder().decode(payload);
    const props = packet.properties || {};
    const name = topic === replyTopic ? "reply" : topic.slice(root.length + 1);
    if (record) {
      window.sonoguideReceived.push({ name, text, retain: !!packet.retain, expiry: props.messageExpiryInterval ?? null });
    }
    if (name === "available") return onAvailable(text);
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      console.warn(`sonoguide display: ${topic} is not JSON`, e);
      return;
    }
    if (name === "reply") return onReply(body, props.correlationData);
    if (name === "guidance") {
      const now = performance.now();
      const expiry = props.messageExpiryInterval ?? DEFAULT_EXPIRY_S; // what is left of its lifetime
      state.guidance = body;
      state.guidanceAt = now;
      state.guidanceStaleAt = now + expiry * 1000;
    } else if (name === "settings") {
      state.settings = body;
      state.settingsAt = performance.now();
    } else if (name === "status") {
      state.status = body;
    } else if (name === "events") {
      onEvent(body);
    }
    render();
  }

  function onAvailable(word) {
    state.available = ["online", "offline", "stopped"].includes(word) ? word : "unknown";
    const badge = $("availability");
    badge.dataset.state = state.available;
    badge.textContent = {
      online: "device: online",
      offline: "device: OFFLINE",
      stopped: "device: stopped",
      unknown: "device: unknown",
    }[state.available];
    render();
  }

  function onEvent(event) {
    if (event.kind === "capture") {
      const flash = $("flash");
      flash.classList.remove("on");
      void flash.offsetWidth; // restart the animation
      flash.classList.add("on");
    }
    const el = $("last-event");
    el.dataset.kind = event.kind;
    const reason = event.reason && !event.message.includes(event.reason) ? ` (${event.reason})` : "";
    el.textContent = `${event.kind.replace("_", " ")}: ${event.message}${reason}`;
  }

  // --- commands (MQTT 5 request/response) ----------------------------------------------------------

  function request(command, body, label) {
    if (!client || !client.connected) {
      return showResponse("error", `${label}: not connected to the broker`);
    }
    const id = `${Date.now().toString(36)}-${Math.random().toString(16).slice(2, 10)}`;
    const timer = setTimeout(() => {
      state.pending.delete(id);
      showResponse("error", `${label}: no answer from the device within ${REQUEST_TIMEOUT_MS / 1000} s`);
    }, REQUEST_TIMEOUT_MS);
    state.pending.set(id, { label, timer });
    showResponse("pending", `${label}: sent…`);
    // With an account, commands name it (cmd/<name>/<username>): the only command topic the display
    // ACL grants, and the daemon then answers only under reply/<username>/.
    const topic = account ? `${root}/cmd/${command}/${account}` : `${root}/cmd/${command}`;
    client.publish(topic, JSON.stringify(body), {
      qos: 1,
      properties: { responseTopic: replyTopic, correlationData: id },
    });
  }

  function onReply(body, correlation) {
    const id = correlation ? new TextDecoder().decode(correlation) : "";
    const pending = state.pending.get(id);
    if (!pending) return; // an answer to someone else, or one that already timed out
    clearTimeout(pending.timer);
    state.pending.delete(id);
    if (body.ok) showResponse("ok", `${pending.label}: done${describeResult(body.result)}`);
    else showResponse("error", `${pending.label} refused: ${body.error || "no reason given"}`);
  }

  function describeResult(result) {
    if (!result) return "";
    if ("value" in result && "param" in result) return ` — ${formatParam(result.param, result.value)}`;
    if ("frozen" in result) return result.frozen ? " — image frozen" : " — image live";
    if ("frame_id" in result) return result.frame_id === null ? "" : ` — frame ${result.frame_id}`;
    if ("name" in result && "settings" in result) {
      const applied = Object.entries(result.settings).map(([p, v]) => formatParam(p, v));
      return applied.length ? ` — ${applied.join(", ")}` : "";
    }
    if ("enabled" in result) return ""; // the label said it ("auto gain off")
    return "";
  }

  function showResponse(kind, text) {
    const el = $("response");
    el.dataset.state = kind;
    el.textContent = (kind === "error" ? "⚠ " : kind === "ok" ? "✔ " : "") + text;
  }

  function wireControls() {
    const step = (param, steps, label) => () => request("step_param", { param, steps }, label);
    $("gain-up").onclick = step("gain_db", GAIN_STEPS, "gain +");
    $("gain-down").onclick = step("gain_db", -GAIN_STEPS, "gain −");
    $("depth-up").onclick = step("depth_mm", 1, "depth +");
    $("depth-down").onclick = step("depth_mm", -1, "depth −");
    $("freq-up").onclick = step("freq_mhz", 1, "frequency +");
    $("freq-down").onclick = step("freq_mhz", -1, "frequency −");
    const auto = (which) => () => {
      const on = !!(state.settings && state.settings.auto[which]);
      request("set_auto", { param: which, enabled: !on }, `auto ${which} ${on ? "off" : "on"}`);
    };
    $("gain-auto").onclick = auto("gain");
    $("depth-auto").onclick = auto("depth");
    $("freeze").onclick = () => {
      const frozen = !!(state.settings && state.settings.frozen);
      request("freeze", { frozen: !frozen }, frozen ? "unfreeze" : "freeze");
    };
    $("capture").onclick = () => request("capture", {}, "capture");
    $("preset").onclick = () => {
      const name = $("preset-name").value;
      request("preset", { name }, `preset ${name}`);
    };
  }

  // --- rendering ----------------------------------------------------------------------------------

  function formatParam(param, value) {
    if (value === null || value === undefined) return "–";
    if (param === "gain_db") return `${Number.isInteger(value) ? value : value.toFixed(1)} dB`;
    if (param === "depth_mm") return `${(value / 10).toFixed(value % 10 ? 1 : 0)} cm`;
    return `${value} MHz`;
  }

  function renderGuidance(now) {
    const card = $("guidance");
    const g = state.guidance;
    const live = state.available === "online" && state.connection === "connected";
    let mode = "none";
    if (g) mode = now <= state.guidanceStaleAt && live ? "current" : "stale";
    card.dataset.state = mode;
    card.dataset.seq = g ? String(g.seq) : "";
    const stale = $("stale-label");
    if (!g) {
      $("instruction").textContent = live ? "waiting for guidance…" : "no guidance";
      $("magnitude").textContent = "";
      stale.textContent = "";
      window.SonoguideDrawing.draw($("drawing"), "", 0, "");
      setQuality(null);
      $("hold").hidden = true;
      return;
    }
    $("instruction").textContent = g.text;
    // The daemon's words carry the magnitude already ("Slide toward the head 12 mm"); say it apart
    // only when they do not.
    const spelled = /\d/.test(g.text);
    $("magnitude").textContent = !spelled && g.magnitude > 0 && g.unit ? `${formatMagnitude(g.magnitude)} ${g.unit === "deg" ? "°" : g.unit}` : "";
    if ($("drawing").dataset.instruction !== g.instruction || card.dataset.drawn !== `${g.seq}`) {
      window.SonoguideDrawing.draw($("drawing"), g.instruction, g.magnitude, g.unit);
      card.dataset.drawn = `${g.seq}`;
    }
    setQuality(g.quality);
    const hold = $("hold");
    hold.hidden = !((g.instruction === "good_view" || g.instruction === "hold_still") && mode === "current");
    hold.dataset.kind = g.instruction;
    hold.textContent = g.instruction === "good_view" ? "✔ GOOD VIEW — HOLD STILL" : "HOLD STILL";
    if (mode === "stale") {
      const age = Math.max(0, (now - state.guidanceAt) / 1000);
      const why = state.available !== "online" ? `device ${state.available}` : state.connection !== "connected" ? "broker disconnected" : `no guidance for ${age.toFixed(1)} s`;
      stale.textContent = `STALE — ${why} — do not follow`;
    } else {
      stale.textContent = "";
    }
    $("guidance-meta").textContent = `confidence ${Math.round(g.confidence * 100)} % · contact ${Math.round(g.contact * 100)} %${g.frozen ? " · FROZEN" : ""}`;
  }

  function formatMagnitude(m) {
    return m >= 10 ? Math.round(m).toString() : m.toFixed(1).replace(/\.0$/, "");
  }

  function setQuality(q) {
    const meter = $("quality-meter");
    const pct = q === null || q === undefined ? 0 : Math.round(q * 100);
    meter.setAttribute("aria-valuenow", String(pct));
    meter.dataset.value = q === null || q === undefined ? "" : q.toFixed(3);
    $("quality-fill").style.width = `${pct}%`;
    meter.dataset.band = pct >= 70 ? "good" : pct >= 40 ? "fair" : "poor";
    $("quality-value").textContent = q === null || q === undefined ? "–" : `${pct} %`;
  }

  function renderSettings(now) {
    const s = state.settings;
    if (!s) return;
    $("gain-value").textContent = formatParam("gain_db", s.gain_db);
    $("depth-value").textContent = formatParam("depth_mm", s.depth_mm);
    $("freq-value").textContent = formatParam("freq_mhz", s.freq_mhz);
    for (const which of ["gain", "depth"]) {
      const paused = Math.max(0, s.paused_s[which] - (now - state.settingsAt) / 1000);
      const mode = $(`${which}-mode`);
      const auto = s.auto[which];
      mode.dataset.mode = auto ? (paused > 0 ? "paused" : "auto") : "manual";
      mode.textContent = auto ? (paused > 0 ? `auto paused ${Math.ceil(paused)} s` : "AUTO") : "MANUAL";
      const toggle = $(`${which}-auto`);
      toggle.setAttribute("aria-pressed", String(auto));
      toggle.textContent = auto ? "auto: on" : "auto: off";
    }
    const freeze = $("freeze");
    freeze.setAttribute("aria-pressed", String(!!s.frozen));
    freeze.textContent = s.frozen ? "▶ unfreeze" : "❄ freeze";
    document.body.dataset.frozen = String(!!s.frozen);
  }

  function renderStatus() {
    const st = state.status;
    if (!st) return;
    $("probe-state").textContent = `${st.probe.state}${st.probe.info ? ` — ${st.probe.info}` : ""}`;
    $("probe-state").dataset.state = st.probe.state;
    $("camera-state").textContent = `${st.camera.state}${st.camera.source ? ` (${st.camera.source})` : ""}`;
    $("camera-state").dataset.state = st.camera.state;
    $("health").textContent = `${st.health} · ${st.fps.toFixed(1)} fps · model ${st.model.version}`;
    $("summary").textContent = st.summary;
  }

  function render() {
    const now = performance.now();
    renderGuidance(now);
    renderSettings(now);
    renderStatus();
  }

  // --- start ----------------------------------------------------------------------------------------

  wireControls();
  setInterval(render, 100); // guidance turns stale on its own clock, and pause countdowns tick
  const cfg = config();
  if (cfg.broker && cfg.device && !(cfg.username && params.get("ask") !== "0")) start(cfg);
  else askForConfig(cfg);
})();
