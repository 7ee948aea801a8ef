// The settings page: every tab talks to the same REST API as scripts do, with the session cookie
// and the CSRF token. Values reach the page only through an explicit Reveal, and text is always
// inserted with textContent, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
// The server's own key rule and message, checked before submit (the server checks again).
const KEY_RULE = /^[A-Z][A-Z0-9_]*$/;
const KEY_MESSAGE = "Key must be SCREAMING_SNAKE_CASE (e.g., MY_API_KEY)";

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-CSRFToken": CSRF } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    return { ok: false, message: "The server could not be reached" };
  }
  const payload = await response.json().catch(() => ({}));
  if (response.status === 401) {
    window.location.assign("/login");
  }
  return response.ok ? { ok: true, data: payload.data } : { ok: false, message: payload.message || response.statusText };
}

function keyError(key) {
  if (!key) return "Key is required";
  if (key.length > 255) return "Key must be 255 characters or less";
  return KEY_RULE.test(key) ? null : KEY_MESSAGE;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function button(label, onClick, className) {
  const node = element("button", label, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function when(iso) {
  if (!iso) return "never";
  const date = new Date(iso);
  const time = element("time", date.toLocaleString());
  time.dateTime = iso;
  return time;
}

function cell(content) {
  const td = element("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "";
  return td;
}

function showAlert(container, message) {
  const alert = container.querySelector('[role="alert"]');
  alert.textContent = message || "";
  alert.hidden = !message;
}

function wireDialog(dialog) {
  dialog.querySelectorAll("button.cancel").forEach((b) => b.addEventListener("click", () => dialog.close()));
  return dialog;
}

// A confirmation dialog that sends DELETE to `pathFor(name)` when confirmed; returns open(name).
function confirmDelete(dialog, pathFor, onDone) {
  wireDialog(dialog);
  let target = null;
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await api("DELETE", pathFor(target));
    if (!result.ok) return showAlert(dialog, result.message);
    dialog.close();
    await onDone();
  });
  return function open(name) {
    target = name;
    dialog.querySelector("h2 code").textContent = name;
    showAlert(dialog, null);
    dialog.showModal();
  };
}

/* ---------------------------------------------------------------- Secrets */

// The Add/Edit dialog, shared by the Secrets and Skills tabs. `open(secret)` edits, `open(null, key)` adds.
function secretEditor(onSaved) {
  const editor = wireDialog(document.getElementById("secret-dialog"));
  const form = editor.querySelector("form");
  let editing = null;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { key, value, description } = form.elements;
    let result;
    if (editing) {
      const body = { description: description.value || null };
      if (value.value !== "") body.value = value.value;
      result = await api("PUT", `/api/secrets/${encodeURIComponent(editing.key)}`, body);
    } else {
      const problem = keyError(key.value);
      if (problem) return showAlert(editor, problem);
      if (value.value === "") return showAlert(editor, "Value is required");
      result = await api("POST", "/api/secrets", { key: key.value, value: value.value, description: description.value || null });
    }
    if (!result.ok) return showAlert(editor, result.message);
    value.value = "";
    editor.close();
    await onSaved();
  });

  return function open(secret, key = "", description = "") {
    editing = secret;
    form.reset();
    showAlert(editor, null);
    editor.querySelector("h2").textContent = secret ? "Edit secret" : "Add secret";
    form.elements.key.readOnly = Boolean(secret);
    form.elements.key.value = secret ? secret.key : key;
    form.elements.description.value = secret ? secret.description || "" : description;
    editor.querySelector("#value-hint").hidden = !secret;
    editor.showModal();
    (secret || key ? form.elements.value : form.elements.key).focus();
  };
}

function initSecrets(panel) {
  const tbody = panel.querySelector("#secrets-table tbody");
  const filter = panel.querySelector("#filter");
  const openEditor = secretEditor(load);
  const history = wireDialog(document.getElementById("history-dialog"));
  const openDelete = confirmDelete(document.getElementById("delete-dialog"),
    (key) => `/api/secrets/${encodeURIComponent(key)}`, load);

  function applyFilter() {
    const needle = filter.value.trim().toLowerCase();
    for (const row of tbody.rows) {
      const text = `${row.dataset.key} ${row.dataset.description}`.toLowerCase();
      row.hidden = needle !== "" && !text.includes(needle);
    }
  }

  async function load() {
    const result = await api("GET", "/api/secrets");
    showAlert(panel, result.ok ? null : result.message);
    if (!result.ok) return;
    tbody.replaceChildren(...result.data.map(row));
    panel.querySelector("#secrets-empty").hidden = result.data.length > 0;
    applyFilter();
  }

  function row(secret) {
    const tr = element("tr");
    tr.dataset.key = secret.key;
    tr.dataset.description = secret.description || "";
    const keyCell = cell(element("code", secret.key));
    const revealed = element("div", null, "revealed");
    revealed.hidden = true;
    keyCell.append(revealed);
    const actions = element("div", null, "actions");
    actions.append(
      button("Edit", () => openEditor(secret)),
      button("History", () => openHistory(secret.key)),
      button("Reveal", () => reveal(secret.key, revealed)),
      button("Delete", () => openDelete(secret.key), "danger"),
    );
    tr.append(keyCell, cell(secret.description), cell(when(secret.updatedAt)), cell(actions));
    return tr;
  }

  async function reveal(key, target) {
    const result = await api("GET", `/api/secrets/${encodeURIComponent(key)}`);
    showAlert(panel, result.ok ? null : result.message);
    if (!result.ok) return;
    target.replaceChildren(element("code", result.data.value));
    target.hidden = false;
  }

  async function openHistory(key) {
    history.querySelector("h2 code").textContent = key;
    showAlert(history, null);
    const list = history.querySelector("ol");
    list.replaceChildren();
    if (!history.open) history.showModal();
    const result = await api("GET", `/api/secrets/${encodeURIComponent(key)}/versions`);
    if (!result.ok) return showAlert(history, result.message);
    for (const version of result.data) {
      const item = element("li");
      item.append(element("strong", `Version ${version.version}`), " · ", when(version.createdAt));
      if (version.createdBy) item.append(` · by ${version.createdBy}`);
      if (version.current) item.append(" ", element("span", "current", "badge"));
      else item.append(" ", button("Restore", () => restore(key, version.version)));
      list.append(item);
    }
  }

  async function restore(key, version) {
    const result = await api("POST", `/api/secrets/${encodeURIComponent(key)}/restore`, { version });
    if (!result.ok) return showAlert(history, result.message);
    await Promise.all([openHistory(key), load()]);
  }

  filter.addEventListener("input", applyFilter);
  panel.querySelector("#add-secret").addEventListener("click", () => openEditor(null));
  load();
}

/* ---------------------------------------------------------------- Skills */

function initSkills(panel) {
  const list = panel.querySelector("#skills-list");
  const openEditor = secretEditor(load);

  function requirementRow(requirement) {
    const tr = element("tr");
    tr.dataset.key = requirement.key;
    const state = element("span", requirement.set ? "set" : "missing", requirement.set ? "badge" : "badge missing");
    const action = element("div", null, "actions");
    if (!requirement.set) {
      action.append(button("Add secret", () => openEditor(null, requirement.key, requirement.description)));
      if (requirement.obtainUrl) {
        const link = element("a", "Where to get it");
        link.href = requirement.obtainUrl;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        action.append(link);
      }
    }
    tr.append(cell(element("code", requirement.key)), cell(requirement.description),
      cell(requirement.required ? "required" : "optional"), cell(state), cell(action));
    return tr;
  }

  function skillCard(skill) {
    const card = element("article", null, "card stack");
    card.dataset.skill = skill.name;
    card.append(element("h2", skill.name));
    if (skill.error) {
      card.append(element("p", `Skipped: ${skill.error}`, "alert"));
      return card;
    }
    if (!skill.requires.length) {
      card.append(element("p", "Needs no secrets.", "hint"));
      return card;
    }
    const table = element("table", null, "list");
    const head = element("thead");
    const headRow = element("tr");
    for (const title of ["Key", "Description", "Need", "State"]) headRow.append(element("th", title));
    headRow.append(element("th"));
    head.append(headRow);
    const body = element("tbody");
    body.append(...skill.requires.map(requirementRow));
    table.append(head, body);
    card.append(table);
    return card;
  }

  async function load() {
    const result = await api("GET", "/api/skills");
    showAlert(panel, result.ok ? null : result.message);
    if (!result.ok) return;
    list.replaceChildren(...result.data.map(skillCard));
    panel.querySelector("#skills-empty").hidden = result.data.length > 0;
  }

  load();
}

/* ---------------------------------------------------------------- Tokens */

function initTokens(panel) {
  const form = panel.querySelector("#token-form");
  if (!form) return;
  const tbody = panel.querySelector("#tokens-table tbody");
  const openRevoke = confirmDelete(document.getElementById("revoke-dialog"),
    (name) => `/api/tokens/${encodeURIComponent(name)}`, load);
  const created = panel.querySelector("#new-token");

  async function load() {
    const result = await api("GET", "/api/tokens");
    if (!result.ok) return showAlert(form, result.message);
    tbody.replaceChildren(...result.data.map((token) => {
      const tr = element("tr");
      tr.dataset.name = token.name;
      const revoke = button("Revoke", () => openRevoke(token.name), "danger");
      tr.append(cell(token.name), cell(token.scopes.join(" ")), cell(token.allow ? token.allow.join(" ") : "every key"),
        cell(when(token.createdAt)), cell(when(token.lastUsedAt)), cell(when(token.expiresAt)), cell(revoke));
      return tr;
    }));
    panel.querySelector("#tokens-empty").hidden = result.data.length > 0;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const scopes = [...form.querySelectorAll('input[name="scopes"]:checked')].map((box) => box.value);
    const allow = form.elements.allow.value.split(/[\s,]+/).filter(Boolean);
    const result = await api("POST", "/api/tokens", {
      name: form.elements.name.value,
      scopes,
      allow: allow.length ? allow : null,
      expiresIn: form.elements.expires_in.value.trim() || null,
    });
    if (!result.ok) return showAlert(form, result.message);
    showAlert(form, null);
    form.reset();
    created.querySelector('input[name="token"]').value = result.data.token;
    created.hidden = false;
    await load();
  });

  panel.querySelector("#copy-token").addEventListener("click", async (event) => {
    const input = created.querySelector('input[name="token"]');
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (error) {
      input.select(); // without clipboard access (plain HTTP), leave it selected for Ctrl+C
      document.execCommand("copy");
    }
    event.target.textContent = "Copied";
  });

  load();
}

/* ---------------------------------------------------------------- Audit */

function initAudit(panel) {
  const form = panel.querySelector("#audit-form");
  if (!form) return;
  const tbody = panel.querySelector("#audit-table tbody");
  const newer = panel.querySelector("#audit-newer");
  const older = panel.querySelector("#audit-older");
  const PAGE = 50;
  let pages = [null]; // the `before` cursor of each page seen, for going back

  async function load() {
    const params = new URLSearchParams({ limit: String(PAGE) });
    for (const name of ["key", "actor"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const before = pages[pages.length - 1];
    if (before) params.set("before", before);
    const result = await api("GET", `/api/audit?${params}`);
    showAlert(panel, result.ok ? null : result.message);
    if (!result.ok) return;
    tbody.replaceChildren(...result.data.map((event) => {
      const tr = element("tr");
      tr.append(cell(when(event.at)), cell(event.actor), cell(event.channel), cell(event.action),
        cell(event.key), cell(event.outcome), cell(event.remoteAddr));
      return tr;
    }));
    panel.querySelector("#audit-empty").hidden = result.data.length > 0;
    newer.disabled = pages.length === 1;
    older.disabled = result.data.length < PAGE;
    older.dataset.cursor = result.data.length ? String(result.data[result.data.length - 1].id) : "";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    pages = [null];
    load();
  });
  older.addEventListener("click", () => { pages.push(older.dataset.cursor); load(); });
  newer.addEventListener("click", () => { pages.pop(); load(); });
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  const panels = { "secrets-panel": initSecrets, "skills-panel": initSkills, "tokens-panel": initTokens, "audit-panel": initAudit };
  for (const [id, init] of Object.entries(panels)) {
    const panel = document.getElementById(id);
    if (panel) init(panel);
  }
});
