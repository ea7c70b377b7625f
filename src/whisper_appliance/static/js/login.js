/* The login page: POST /api/auth/login {username, password} sets the session cookie; then back to ?next= (a path
 * on this server only) or the main page. With registration open, POST /api/auth/register creates an account and
 * the page logs it in. */
"use strict";

(function () {
  const {$} = WA;
  const next = WA.safeNext(new URLSearchParams(window.location.search).get("next"));

  function setStatus(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    node.className = "status-line" + (kind ? " " + kind : "");
  }

  function why(err) {
    if (err.status === 401) return "Wrong username or password.";
    if (err.status === 429) return "Too many failed attempts: " + err.message;
    return err.message;
  }

  async function logIn(username, password) {
    const body = await WA.api("/api/auth/login", {method: "POST", json: {username, password}});
    WA.setSession(body, body.csrf_token);
    window.location.assign(next);
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus("login-status", "Logging in…");
    try {
      await logIn($("login-username").value.trim(), $("login-password").value);
    } catch (err) {
      $("login-password").value = "";
      setStatus("login-status", why(err), "error");
    }
  });

  const register = $("register-form");
  if (register) {
    register.addEventListener("submit", async (event) => {
      event.preventDefault();
      const username = $("register-username").value.trim();
      const password = $("register-password").value;
      setStatus("register-status", "Creating the account…");
      try {
        await WA.api("/api/auth/register", {method: "POST", json: {username, password}});
        await logIn(username, password);
      } catch (err) {
        setStatus("register-status", err.message, "error");
      }
    });
  }

  $("login-username").focus();
})();
