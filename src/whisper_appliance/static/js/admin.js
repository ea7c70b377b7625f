/* The admin page: login (POST /api/admin/login -> csrf_token, kept in memory and sessionStorage and sent as
 * X-CSRF-Token on changes), models (GET /api/models, POST /api/models/load, live progress from the Socket.IO
 * model_status event), API tokens, settings, backup download and restore upload, logout. */
"use strict";

(function () {
  const {el, $} = WA;
  const CSRF_KEY = "wa_csrf";
  let socket = null;

  function setStatus(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    node.className = "status-line" + (kind ? " " + kind : "");
  }

  function showPanel(loggedIn) {
    $("login-card").hidden = loggedIn;
    $("admin-panel").hidden = !loggedIn;
  }

  // -- session --------------------------------------------------------------------------------------------------
  async function restoreSession() {
    const admin = await WA.loadSession();
    if (admin) {
      sessionStorage.setItem(CSRF_KEY, WA.csrfToken || "");
      enterPanel();
    } else {
      sessionStorage.removeItem(CSRF_KEY);
      showPanel(false);
      $("login-password").focus();
    }
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = $("login-password").value;
    setStatus("login-status", "Logging in…");
    try {
      const body = await WA.api("/api/admin/login", {method: "POST", json: {password}});
      WA.setSession(true, body.csrf_token);
      sessionStorage.setItem(CSRF_KEY, body.csrf_token);
      $("login-password").value = "";
      setStatus("login-status", "");
      enterPanel();
    } catch (err) {
      setStatus("login-status", err.status === 401 ? "Wrong password." : "Login failed: " + err.message, "error");
    }
  });

  $("logout").addEventListener("click", async () => {
    try {
      await WA.api("/api/admin/logout", {method: "POST"});
    } catch (err) {
      console.warn("logout request failed", err);
    }
    WA.setSession(false, null);
    sessionStorage.removeItem(CSRF_KEY);
    if (socket) socket.disconnect();
    socket = null;
    showPanel(false);
    setStatus("login-status", "Logged out.");
  });

  function enterPanel() {
    showPanel(true);
    loadModels();
    loadTokens();
    loadSettings();
    if (!socket) {
      socket = WA.connectSocket();
      socket.on("model_status", (status) => {
        showCurrent(status);
        if (status.state !== "loading") loadModels();
      });
    }
  }

  // -- models ---------------------------------------------------------------------------------------------------
  function showCurrent(status) {
    const parts = [status.name || "no model", status.state];
    if (status.engine) parts.push(status.engine);
    if (status.device) parts.push(status.device + (status.compute_type ? " / " + status.compute_type : ""));
    if (status.load_seconds) parts.push("loaded in " + status.load_seconds + " s");
    $("model-current").replaceChildren(el("div", {},
      el("span", {className: "label"}, "Current model: "), el("strong", {}, parts.join(" · ")),
      status.error ? el("div", {className: "error"}, status.error) : null));
    const bar = $("model-progress");
    if (status.state === "loading") {
      bar.hidden = false;
      // Downloads report progress; loading from disk does not, so the bar shows a steady stripe.
      const p = typeof status.progress === "number" ? status.progress : null;
      bar.classList.toggle("indeterminate", p === null);
      $("model-progress-fill").style.width = p === null ? "100%" : Math.round(p * 100) + "%";
    } else {
      bar.hidden = true;
    }
    WA.refreshHealth();
  }

  async function loadModel(name, button) {
    button.disabled = true;
    setStatus("admin-status", "Loading " + name + "…");
    try {
      const body = await WA.api("/api/models/load", {method: "POST", json: {name}});
      showCurrent(body.status);
      setStatus("admin-status", body.status.state === "ready" ? name + " is loaded." : "Loading " + name + "…");
    } catch (err) {
      setStatus("admin-status", "Could not load " + name + ": " + err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function loadModels() {
    try {
      const body = await WA.api("/api/models");
      showCurrent(body.current);
      const rows = body.models.map((model) => {
        const button = el("button", {type: "button", className: "btn btn-small", dataset: {model: model.name}},
          model.state === "loaded" ? "Loaded" : "Load");
        // "available" means neither on disk nor bundled: loading it downloads it, if the server allows that.
        const needsDownload = model.state === "available";
        button.disabled = model.state === "loaded" || (needsDownload && !body.downloads_allowed);
        if (needsDownload) button.textContent = body.downloads_allowed ? "Download and load" : "Not installed";
        button.addEventListener("click", () => loadModel(model.name, button));
        return el("tr", {"data-testid": "model-row"},
          el("td", {}, model.name), el("td", {}, el("span", {className: "pill pill-" + model.state}, model.state)),
          el("td", {}, WA.formatBytes(model.size_bytes)), el("td", {}, model.english_only ? "English" : "99 languages"),
          el("td", {className: "right"}, button));
      });
      $("models-body").replaceChildren(...rows);
    } catch (err) {
      setStatus("admin-status", "Could not list models: " + err.message, "error");
    }
  }

  // -- tokens ---------------------------------------------------------------------------------------------------
  async function loadTokens() {
    try {
      const body = await WA.api("/api/admin/tokens");
      const rows = body.tokens.map((token) => {
        const cell = el("td", {className: "right"});
        if (token.configured) {
          cell.append(el("span", {className: "muted"}, "from API_KEYS"));
        } else {
          const revoke = el("button", {type: "button", className: "btn btn-small btn-danger"}, "Revoke");
          revoke.addEventListener("click", () => revokeToken(token));
          cell.append(revoke);
        }
        return el("tr", {}, el("td", {}, token.label), el("td", {}, WA.formatDate(token.created_at)),
                  el("td", {}, WA.formatDate(token.last_used_at)), cell);
      });
      $("tokens-body").replaceChildren(...rows);
    } catch (err) {
      setStatus("admin-status", "Could not list tokens: " + err.message, "error");
    }
  }

  async function revokeToken(token) {
    if (!window.confirm("Revoke the token “" + token.label + "”? Clients using it stop working.")) return;
    try {
      await WA.api("/api/admin/tokens/" + encodeURIComponent(token.id), {method: "DELETE"});
      loadTokens();
    } catch (err) {
      setStatus("admin-status", "Could not revoke: " + err.message, "error");
    }
  }

  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const label = $("token-label").value.trim();
    if (!label) return;
    try {
      const body = await WA.api("/api/admin/tokens", {method: "POST", json: {label}});
      $("token-new-value").textContent = body.token;
      $("token-new").hidden = false;
      $("token-label").value = "";
      loadTokens();
    } catch (err) {
      setStatus("admin-status", "Could not create the token: " + err.message, "error");
    }
  });

  // -- settings -------------------------------------------------------------------------------------------------
  async function loadSettings() {
    try {
      const settings = await WA.api("/api/admin/settings");
      $("settings-body").replaceChildren(...Object.entries(settings).map(([name, value]) => el("tr", {},
        el("th", {}, name),
        el("td", {}, value === null ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value)))));
    } catch (err) {
      setStatus("admin-status", "Could not read the settings: " + err.message, "error");
    }
  }

  // -- restore --------------------------------------------------------------------------------------------------
  $("restore-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("restore-file").files[0];
    if (!file) {
      setStatus("restore-status", "Choose a backup file first.", "warn");
      return;
    }
    if (!window.confirm("Replace the whole database with " + file.name + "? The current one is kept as a copy.")) {
      return;
    }
    const data = new FormData();
    data.append("file", file, file.name);
    setStatus("restore-status", "Restoring…");
    try {
      const body = await WA.api("/api/admin/restore", {method: "POST", body: data});
      setStatus("restore-status", "Restored: " + body.entries + " history entries (previous database saved as " +
        body.previous_saved_as + ").");
    } catch (err) {
      setStatus("restore-status", "Restore failed: " + err.message, "error");
    }
  });

  restoreSession();
})();
