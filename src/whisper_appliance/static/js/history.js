/* The history page: search (GET /api/history), filters, pagination, stats (GET /api/history/stats), inline
 * edit (PATCH), delete (logged-in accounts), per-entry export links and export of everything. The server shows
 * each caller only their own entries (the guests' shared ones without a login); an admin sees all of them and
 * may filter by user.
 *
 * Search snippets mark matches with U+0002 (start) and U+0003 (end); they become <mark> elements holding text
 * nodes. Transcripts and filenames are data: they only ever reach the page as text. */
"use strict";

(function () {
  const {el, $} = WA;
  const PAGE_SIZE = 20;
  const MARK_START = "\u0002";
  const MARK_END = "\u0003";

  const list = $("history-list");
  const status = $("history-status");
  let offset = 0;
  let total = 0;

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status-line" + (kind ? " " + kind : "");
  }

  /** "a \u0002b\u0003 c" -> [text "a ", <mark>b</mark>, text " c"]; markers never reach the page. */
  function snippetNodes(snippet) {
    const nodes = [];
    let inMark = false;
    let buffer = "";
    const flush = () => {
      if (!buffer) return;
      nodes.push(inMark ? el("mark", {}, buffer) : document.createTextNode(buffer));
      buffer = "";
    };
    for (const ch of snippet) {
      if (ch === MARK_START || ch === MARK_END) {
        flush();
        inMark = ch === MARK_START;
      } else {
        buffer += ch;
      }
    }
    flush();
    return nodes;
  }

  function filters() {
    const params = new URLSearchParams();
    const q = $("history-q").value.trim();
    if (q) params.set("q", q);
    for (const name of ["source", "language"]) {
      const value = $("history-" + name).value;
      if (value) params.set(name, value);
    }
    const since = $("history-since").value;
    const until = $("history-until").value;
    if (since) params.set("since", since);
    if (until) params.set("until", until); // the server includes the whole day of a date
    const user = $("history-user").value;
    if (user) params.set("user", user);
    return params;
  }

  /** An admin sees everyone's entries and may narrow them to one user (or the guests'). */
  async function offerUserFilter() {
    if (!WA.isAdmin) return;
    try {
      const body = await WA.api("/api/admin/users");
      $("history-user").append(...body.users.map((u) => el("option", {value: u.username}, u.username)));
      $("history-user").hidden = false;
    } catch (err) {
      console.warn("could not list the users", err);
    }
  }

  function entryMeta(entry) {
    const parts = [WA.formatDate(entry.created_at), entry.source];
    if (entry.language) parts.push(entry.language);
    if (entry.duration) parts.push(WA.formatDuration(entry.duration));
    if (entry.model) parts.push(entry.model);
    return parts.join(" · ");
  }

  function exportLinks(entry) {
    const box = el("span", {className: "links"});
    for (const format of ["txt", "srt", "vtt", "json"]) {
      box.append(el("a", {href: "/api/history/" + entry.id + "/export?format=" + format, download: true,
                          className: "link"}, format));
    }
    return box;
  }

  function startEdit(item, entry) {
    const body = item.querySelector(".entry-text");
    const area = el("textarea", {className: "entry-edit", rows: 5, "aria-label": "Transcript text"});
    area.value = entry.text;
    const save = el("button", {type: "button", className: "btn btn-primary"}, "Save");
    const cancel = el("button", {type: "button", className: "btn"}, "Cancel");
    const editor = el("div", {className: "entry-editor"}, area, el("div", {className: "toolbar"}, save, cancel));
    body.replaceWith(editor);
    area.focus();
    cancel.addEventListener("click", () => editor.replaceWith(body));
    save.addEventListener("click", async () => {
      save.disabled = true;
      try {
        const updated = await WA.api("/api/history/" + entry.id, {method: "PATCH", json: {text: area.value}});
        Object.assign(entry, updated);
        editor.replaceWith(renderEntry(entry, null).querySelector(".entry-text"));
        setStatus("Entry #" + entry.id + " saved.");
      } catch (err) {
        save.disabled = false;
        setStatus("Could not save: " + err.message, "error");
      }
    });
  }

  async function remove(item, entry) {
    if (!window.confirm("Delete history entry #" + entry.id + "? This cannot be undone.")) return;
    try {
      await WA.api("/api/history/" + entry.id, {method: "DELETE"});
      item.remove();
      total = Math.max(0, total - 1);
      setStatus("Entry #" + entry.id + " deleted.");
      loadStats();
    } catch (err) {
      setStatus("Could not delete: " + err.message, "error");
    }
  }

  function renderEntry(entry, snippet) {
    const text = snippet ? el("p", {className: "entry-text"}, ...snippetNodes(snippet))
      : el("p", {className: "entry-text"}, entry.text);
    const actions = el("div", {className: "entry-actions"}, exportLinks(entry));
    const item = el("li", {className: "entry", dataset: {id: entry.id}, "data-testid": "history-entry"},
      el("div", {className: "entry-head"},
        el("span", {className: "entry-title"}, entry.filename || (entry.source === "live" ? "Dictation" : "Transcript")),
        el("span", {className: "muted"}, entryMeta(entry))),
      text, actions);
    const edit = el("button", {type: "button", className: "btn btn-small"}, "Edit");
    edit.addEventListener("click", () => startEdit(item, entry));
    actions.append(edit);
    if (WA.loggedIn) { // an account deletes its own entries (guests share theirs, so they cannot)
      const del = el("button", {type: "button", className: "btn btn-small btn-danger"}, "Delete");
      del.addEventListener("click", () => remove(item, entry));
      actions.append(del);
    }
    return item;
  }

  async function search() {
    const params = filters();
    params.set("limit", String(PAGE_SIZE));
    params.set("offset", String(offset));
    setStatus("Searching…");
    try {
      const page = await WA.api("/api/history?" + params.toString());
      total = page.total;
      list.replaceChildren(...page.items.map((item) => renderEntry(item, params.has("q") ? item.snippet : null)));
      const first = page.total ? page.offset + 1 : 0;
      const last = page.offset + page.items.length;
      setStatus(page.total ? "" : (params.has("q") ? "Nothing matches." : "No transcripts yet."));
      $("history-page").textContent = page.total ? first + "–" + last + " of " + page.total : "";
      $("history-prev").disabled = page.offset === 0;
      $("history-next").disabled = last >= page.total;
    } catch (err) {
      list.replaceChildren();
      setStatus("Could not load the history: " + err.message, "error");
    }
  }

  async function loadStats() {
    const box = $("history-stats");
    try {
      const user = $("history-user").value;
      const stats = await WA.api("/api/history/stats" + (user ? "?user=" + encodeURIComponent(user) : ""));
      const sources = Object.entries(stats.by_source || {}).map(([name, n]) => name + " " + n).join(", ");
      const cell = (label, value) => el("div", {className: "stat"}, el("span", {className: "stat-value"}, value),
                                         el("span", {className: "stat-label"}, label));
      box.replaceChildren(
        cell("transcripts", String(stats.entries)),
        cell("hours of audio", (stats.audio_hours || 0).toFixed(2)),
        cell("hours of processing", (stats.processing_hours || 0).toFixed(2)),
        cell("by source", sources || "–"));
    } catch (err) {
      box.replaceChildren(el("span", {className: "muted"}, "Statistics unavailable: " + err.message));
    }
  }

  $("history-search").addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    search();
  });
  $("history-user").addEventListener("change", loadStats);
  for (const id of ["history-source", "history-language", "history-since", "history-until", "history-user"]) {
    $(id).addEventListener("change", () => {
      offset = 0;
      search();
    });
  }
  $("history-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    search();
  });
  $("history-next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    search();
  });

  WA.loadSession().then(() => {
    offerUserFilter();
    search();
    loadStats();
  });
})();
