/* Shared browser helpers for every page: DOM building (text only, never HTML), the JSON API client with the
 * login's CSRF token and the optional API token, who is logged in (GET /api/auth/me) and the top bar's log-out
 * button, transcript writers (txt/srt/vtt) for client-side downloads, and the model-status badge / degraded
 * banner fed by GET /health.
 *
 * Everything the server sends is data: it reaches the page through textContent and createElement only. */
"use strict";

window.WA = (function () {
  const TOKEN_KEY = "wa_api_token";
  let csrfToken = null;
  let me = null; // {id, username, role, scopes, authenticated}; null until loaded or when not logged in

  // -- DOM ----------------------------------------------------------------------------------------------------
  /** el("a", {href: "/x", className: "btn", dataset: {id: 3}}, "text", otherNode): children become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  // -- API ----------------------------------------------------------------------------------------------------
  function apiToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch (err) {
      console.warn("localStorage is not available", err);
      return "";
    }
  }

  function setApiToken(token) {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(method) {
    const headers = {};
    const token = apiToken();
    if (token) headers["Authorization"] = "Bearer " + token;
    // A login's cookie rides along on uploads and edits; the server then wants the CSRF token.
    if (csrfToken && method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken;
    return headers;
  }

  async function errorFrom(resp) {
    let code = "http_" + resp.status;
    let message = resp.statusText || ("HTTP " + resp.status);
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (err) {
      // Not JSON (a proxy's error page, a dropped connection): keep the HTTP status as the message.
    }
    return new ApiError(resp.status, code, message);
  }

  /** fetch JSON: api("/api/x", {method: "POST", json: {...}}) or {body: FormData}; throws ApiError. */
  async function api(path, options) {
    const opts = options || {};
    const method = (opts.method || "GET").toUpperCase();
    const headers = Object.assign(authHeaders(method), opts.headers || {});
    let body = opts.body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    let resp;
    try {
      resp = await fetch(path, {method, headers, body, credentials: "same-origin", cache: "no-store"});
    } catch (err) {
      throw new ApiError(0, "network_error", "the server could not be reached (" + err.message + ")");
    }
    if (!resp.ok) throw await errorFrom(resp);
    if (opts.raw) return resp;
    const type = resp.headers.get("Content-Type") || "";
    return type.includes("json") ? resp.json() : resp.text();
  }

  /** Ask the server who this browser is (a login, or the guest); remember the login's CSRF token. */
  async function loadSession() {
    try {
      me = await api("/api/auth/me");
      csrfToken = me.csrf_token || null;
    } catch (err) {
      if (err.status !== 401) console.warn("could not read the session", err);
      me = null;
      csrfToken = null;
    }
    return me;
  }

  function setSession(info, csrf) {
    me = info;
    csrfToken = csrf || null;
  }

  /** Only a path on this server: a login never sends a browser somewhere else. */
  function safeNext(value) {
    return typeof value === "string" && value.startsWith("/") && !value.startsWith("//") &&
      !value.startsWith("/\\") ? value : "/";
  }

  async function logout() {
    try {
      await api("/api/auth/logout", {method: "POST"});
    } catch (err) {
      console.warn("logout request failed", err);
    }
    setSession(null, null);
    window.location.assign("/login");
  }

  // -- transcript writers ---------------------------------------------------------------------------------------
  function timestamp(seconds, decimalMarker) {
    const ms = Math.max(0, Math.round(Number(seconds || 0) * 1000));
    const h = Math.floor(ms / 3600000);
    const m = Math.floor((ms % 3600000) / 60000);
    const s = Math.floor((ms % 60000) / 1000);
    const rest = ms % 1000;
    const pad = (n, w) => String(n).padStart(w, "0");
    return pad(h, 2) + ":" + pad(m, 2) + ":" + pad(s, 2) + decimalMarker + pad(rest, 3);
  }

  /** segments: [{start, end, text}] in seconds. */
  function renderTranscript(segments, format) {
    const items = segments.filter((s) => (s.text || "").trim());
    if (format === "srt") {
      return items.map((s, i) => (i + 1) + "\n" + timestamp(s.start, ",") + " --> " + timestamp(s.end, ",") +
        "\n" + s.text.trim().replace(/-->/g, "->") + "\n").join("\n");
    }
    if (format === "vtt") {
      return "WEBVTT\n\n" + items.map((s) => timestamp(s.start, ".") + " --> " + timestamp(s.end, ".") + "\n" +
        s.text.trim().replace(/-->/g, "->") + "\n").join("\n");
    }
    return joinText(items.map((s) => s.text)) + "\n";
  }

  function joinText(parts) {
    return parts.map((p) => (p || "").trim()).filter(Boolean).join(" ");
  }

  const MIME = {txt: "text/plain", srt: "application/x-subrip", vtt: "text/vtt", json: "application/json",
                csv: "text/csv"};

  function download(filename, text, format) {
    const blob = new Blob([text], {type: (MIME[format] || "text/plain") + ";charset=utf-8"});
    const url = URL.createObjectURL(blob);
    const link = el("a", {href: url, download: filename});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    // Older browsers: copy through a temporary, off-screen text area.
    const area = el("textarea", {className: "offscreen", readonly: true});
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("the browser refused to copy");
  }

  // -- formatting -----------------------------------------------------------------------------------------------
  function formatBytes(bytes) {
    if (bytes === null || bytes === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(bytes);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return value.toFixed(unit === 0 ? 0 : 1) + " " + units[unit];
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const total = Math.round(Number(seconds));
    const m = Math.floor(total / 60);
    const s = total % 60;
    return m + ":" + String(s).padStart(2, "0");
  }

  function formatDate(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    return isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  // -- model status and degraded banner ------------------------------------------------------------------------
  const statusListeners = [];
  let lastHealth = null;

  function showHealth(body, httpStatus) {
    lastHealth = body;
    const model = (body && body.model) || {};
    const state = model.state || (httpStatus === 200 ? "ready" : "unavailable");
    const badge = $("model-badge");
    if (badge) {
      badge.className = "model-badge state-" + state;
      $("model-badge-text").textContent = (model.name || "no model") + " · " + state;
    }
    const banner = $("degraded-banner");
    if (banner) {
      const degraded = httpStatus !== 200;
      banner.hidden = !degraded;
      $("degraded-reason").textContent = degraded ? (body && body.reason) || "the server is not ready" : "";
    }
    for (const listener of statusListeners) listener(body, httpStatus);
  }

  async function refreshHealth() {
    try {
      const resp = await fetch("/health", {cache: "no-store", credentials: "same-origin"});
      let body = null;
      try {
        body = await resp.json();
      } catch (err) {
        body = {reason: "the server answered /health with HTTP " + resp.status};
      }
      showHealth(body, resp.status);
    } catch (err) {
      showHealth({reason: "the server cannot be reached"}, 0);
    }
  }

  function onHealth(listener) {
    statusListeners.push(listener);
    if (lastHealth) listener(lastHealth, lastHealth.status === "ok" ? 200 : 503);
  }

  /** A Socket.IO connection to this server, with the stored API token (servers with REQUIRE_AUTH need it). */
  function connectSocket(extra) {
    const token = apiToken();
    return io(Object.assign({transports: ["websocket"], auth: token ? {token} : {}}, extra || {}));
  }

  function startHealthPolling(intervalMs) {
    refreshHealth();
    setInterval(refreshHealth, intervalMs || 5000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    startHealthPolling(5000);
    const button = $("logout-button");
    if (button) button.addEventListener("click", logout);
  });

  return {
    el, $, api, ApiError, apiToken, setApiToken, loadSession, setSession, safeNext, logout,
    get csrfToken() { return csrfToken; },
    get me() { return me; },
    get loggedIn() { return Boolean(me && me.authenticated); },
    get isAdmin() { return Boolean(me && me.role === "admin" && (me.scopes || []).includes("admin")); },
    timestamp, renderTranscript, joinText, download, copyText,
    formatBytes, formatDuration, formatDate, refreshHealth, onHealth, connectSocket,
  };
})();
