/* The account page: "log out everywhere" (POST /api/auth/logout {everywhere: true}), personal API tokens (GET|POST /api/auth/tokens, DELETE /api/auth/tokens/<id>; a new token's
 * plaintext is shown once) and the password change (POST /api/auth/password, which logs out every other browser
 * and hands this one a new CSRF token). */
"use strict";

(function () {
  const {el, $} = WA;

  function setStatus(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    node.className = "status-line" + (kind ? " " + kind : "");
  }

  async function loadTokens() {
    try {
      const body = await WA.api("/api/auth/tokens");
      $("tokens-body").replaceChildren(...body.tokens.map((token) => {
        const cell = el("td", {className: "right"});
        if (token.configured) {
          cell.append(el("span", {className: "muted"}, "from API_KEYS"));
        } else {
          const revoke = el("button", {type: "button", className: "btn btn-small btn-danger"}, "Revoke");
          revoke.addEventListener("click", () => revokeToken(token));
          cell.append(revoke);
        }
        return el("tr", {"data-testid": "token-row"}, el("td", {}, token.label), el("td", {}, token.scope),
                  el("td", {}, WA.formatDate(token.created_at)), el("td", {}, WA.formatDate(token.last_used_at)),
                  cell);
      }));
    } catch (err) {
      setStatus("account-status", "Could not list your tokens: " + err.message, "error");
    }
  }

  async function revokeToken(token) {
    if (!window.confirm("Revoke the token “" + token.label + "”? Clients using it stop working.")) return;
    try {
      await WA.api("/api/auth/tokens/" + encodeURIComponent(token.id), {method: "DELETE"});
      loadTokens();
    } catch (err) {
      setStatus("account-status", "Could not revoke: " + err.message, "error");
    }
  }

  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const label = $("token-label").value.trim();
    if (!label) return;
    try {
      const body = await WA.api("/api/auth/tokens", {method: "POST", json: {label, scope: $("token-scope").value}});
      $("token-new-value").textContent = body.token;
      $("token-new").hidden = false;
      $("token-label").value = "";
      loadTokens();
    } catch (err) {
      setStatus("account-status", "Could not create the token: " + err.message, "error");
    }
  });

  $("password-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus("password-status", "Changing…");
    try {
      const body = await WA.api("/api/auth/password", {method: "POST", json: {
        current_password: $("password-current").value, new_password: $("password-new").value}});
      WA.setSession(WA.me, body.csrf_token);
      $("password-current").value = "";
      $("password-new").value = "";
      setStatus("password-status", "Password changed; other browsers were logged out.");
    } catch (err) {
      setStatus("password-status", err.message, "error");
    }
  });

  $("logout-everywhere").addEventListener("click", async () => {
    try {
      await WA.api("/api/auth/logout", {method: "POST", json: {everywhere: true}});
    } catch (err) {
      setStatus("account-status", "Could not log out: " + err.message, "error");
      return;
    }
    window.location.assign("/login");
  });

  WA.loadSession().then(loadTokens);
})();
