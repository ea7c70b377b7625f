/* The admin page (admin accounts only; /login first): users (GET /api/admin/stats for the table with each
 * user's figures, POST /api/admin/users, PATCH/DELETE /api/admin/users/<id>), models (GET /api/models,
 * POST /api/models/load, live progress from the Socket.IO model_status event), settings, backup download and
 * restore upload. Changes carry the login's CSRF token (WA.api). */
"use strict";

(function () {
  const {el, $} = WA;
  let socket = null;

  function setStatus(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    node.className = "status-line" + (kind ? " " + kind : "");
  }

  function enterPanel() {
    loadUsers();
    loadModels();
    loadSettings();
    if (!socket) {
      socket = WA.connectSocket();
      socket.on("model_status", (status) => {
        showCurrent(status);
        if (status.state !== "loading") loadModels();
      });
    }
  }

  // -- users ----------------------------------------------------------------------------------------------------
  let users = [];

  function jobSummary(jobs) {
    const parts = Object.entries(jobs || {}).filter(([, n]) => n).map(([status, n]) => n + " " + status);
    return parts.join(", ") || "–";
  }

  async function changeUser(user, change, done) {
    try {
      await WA.api("/api/admin/users/" + user.id, {method: "PATCH", json: change});
      setStatus("users-status", done);
      loadUsers();
    } catch (err) {
      setStatus("users-status", "Could not change " + user.username + ": " + err.message, "error");
    }
  }

  async function deleteUser(user, choice) {
    const query = choice === "delete" ? "data=delete" : "transfer_to=" + encodeURIComponent(choice);
    try {
      const body = await WA.api("/api/admin/users/" + user.id + "?" + query, {method: "DELETE"});
      setStatus("users-status", user.username + " deleted (" + body.entries + " history entries " +
        (body.transferred_to ? "handed over" : "deleted") + ").");
      loadUsers();
    } catch (err) {
      setStatus("users-status", "Could not delete " + user.username + ": " + err.message, "error");
    }
  }

  function passwordForm(user) {
    const input = el("input", {type: "password", placeholder: "new password", minlength: "10",
                               autocomplete: "new-password", "aria-label": "New password for " + user.username});
    const save = el("button", {type: "submit", className: "btn btn-small btn-primary"}, "Set");
    const form = el("form", {className: "toolbar"}, input, save);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      changeUser(user, {password: input.value}, "Password of " + user.username + " reset; their sessions ended.");
    });
    return form;
  }

  function deleteForm(user) {
    const choice = el("select", {"aria-label": "What happens to " + user.username + "'s history"},
      el("option", {value: "delete"}, "delete their history and jobs"),
      ...users.filter((u) => u.id !== user.id).map((u) => el("option", {value: String(u.id)}, "hand them to " + u.username)));
    const confirm = el("button", {type: "submit", className: "btn btn-small btn-danger"}, "Delete " + user.username);
    const form = el("form", {className: "toolbar"}, choice, confirm);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      deleteUser(user, choice.value);
    });
    return form;
  }

  function userRow(user) {
    const me = WA.me || {};
    const actions = el("td", {className: "right"});
    const extra = el("div", {});
    const button = (label, onClick, kind) => {
      const b = el("button", {type: "button", className: "btn btn-small" + (kind ? " " + kind : "")}, label);
      b.addEventListener("click", onClick);
      actions.append(b);
    };
    if (user.id !== me.id) {
      button(user.role === "admin" ? "Make user" : "Make admin", () => changeUser(user,
        {role: user.role === "admin" ? "user" : "admin"}, user.username + " is now " +
        (user.role === "admin" ? "a user" : "an admin") + "."));
      button(user.disabled ? "Enable" : "Disable", () => changeUser(user, {disabled: !user.disabled},
        user.username + (user.disabled ? " enabled." : " disabled; their sessions ended.")));
    }
    button("Reset password", () => extra.replaceChildren(passwordForm(user)));
    if (user.id !== me.id) button("Delete…", () => extra.replaceChildren(deleteForm(user)), "btn-danger");
    actions.append(extra);
    return el("tr", {"data-testid": "user-row", dataset: {username: user.username}},
      el("td", {}, user.username), el("td", {}, user.role),
      el("td", {}, el("span", {className: "pill pill-" + (user.disabled ? "disabled" : "active")},
                      user.disabled ? "disabled" : "active")),
      el("td", {}, WA.formatDate(user.last_login_at)), el("td", {}, String(user.entries)),
      el("td", {}, (user.audio_hours || 0).toFixed(2)), el("td", {}, WA.formatBytes(user.storage_bytes)),
      el("td", {}, jobSummary(user.jobs)), actions);
  }

  async function loadUsers() {
    try {
      const stats = await WA.api("/api/admin/stats");
      users = stats.users;
      $("users-body").replaceChildren(...users.map(userRow));
      const guest = stats.guest;
      $("guest-usage").textContent = "Guest history (anonymous use): " + guest.entries + " entries, " +
        (guest.audio_hours || 0).toFixed(2) + " h of audio, " + WA.formatBytes(guest.storage_bytes) +
        ". Database: " + WA.formatBytes(stats.totals.database_bytes) + ".";
    } catch (err) {
      setStatus("users-status", "Could not list the users: " + err.message, "error");
    }
  }

  $("user-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const json = {username: $("user-name").value.trim(), password: $("user-password").value,
                  role: $("user-role").value};
    try {
      const user = await WA.api("/api/admin/users", {method: "POST", json});
      $("user-name").value = "";
      $("user-password").value = "";
      setStatus("users-status", "User " + user.username + " created.");
      loadUsers();
    } catch (err) {
      setStatus("users-status", "Could not create the user: " + err.message, "error");
    }
  });

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

  WA.loadSession().then(enterPanel);
})();
