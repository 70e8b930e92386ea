// swarmhub admin page: plain JavaScript, no framework, no build step, nothing from a CDN.
//
// Everything shown comes from the hub's JSON API (../api/ relative to /admin/) and reaches
// the DOM only through textContent, .value and setAttribute — never innerHTML — so a file
// name or a label cannot inject markup. The token lives in sessionStorage (gone with the
// tab) and is sent as "Authorization: Bearer". Tables are synchronised row by row, keyed by
// id, so the 2-second refresh never rebuilds a row under the user's pointer.
"use strict";

(() => {
  const TOKEN_KEY = "swarmhub.token";
  const REFRESH_MS = 2000;
  const API = new URL("../api/", document.baseURI);
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    me: null,
    generation: 0, // bumped on sign-in/out so a late answer of an old session is ignored
    timer: null,
    query: "",
    fileRows: new Map(), // id -> {sig, row, cells, file}
    collectionRows: new Map(),
    tokenRows: new Map(),
    live: null, // {t, http: Map(id -> bytes), httpTotal, files: Map(id -> numbers), httpRates}
    refreshFailed: false,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---------------------------------------------------------------------------- helpers

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(new URL(path, API), init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the hub (" + err.message + ")");
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const why = data && typeof data.error === "string" ? data.error : resp.statusText;
      throw new ApiError(resp.status, `${why} (HTTP ${resp.status})`);
    }
    return data;
  }

  function safeUrl(value) {
    try {
      const url = new URL(value, document.baseURI);
      if (["http:", "https:", "magnet:"].includes(url.protocol)) return url.href;
    } catch (_) {
      /* not a URL */
    }
    return "#";
  }

  /** A new element; props: text, class, href, on: {event: fn}, other attributes. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key === "href") node.setAttribute("href", safeUrl(value));
      else if (key === "on") {
        for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      } else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function fmtBytes(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "–";
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + UNITS[i];
  }
  const fmtRate = (n) => fmtBytes(n) + "/s";
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  /** Date and time as two lines (keeps the wide file table narrow). */
  function fmtWhen(iso) {
    const [day, time] = fmtTime(iso).split(" ");
    return time ? [el("div", { text: day }), el("div", { class: "muted small", text: time })] : [day];
  }
  const shortHash = (h) => (h.length > 16 ? h.slice(0, 8) + "…" + h.slice(-6) : h);

  function showMessage(text, kind = "error") {
    $("message-text").textContent = text;
    $("message").className = "message " + kind;
    $("message").hidden = false;
  }
  function clearMessage() {
    $("message").hidden = true;
  }
  /** Run an action from a button or form; its failure goes to the message bar. */
  async function act(what, fn) {
    try {
      return await fn();
    } catch (err) {
      showMessage(`${what} failed: ${err.message}`);
      return undefined;
    }
  }

  /**
   * Make tbody show `items` in order: rows whose signature is unchanged stay as they are,
   * changed ones are rebuilt, gone ones removed. `rows` maps key -> {sig, row, ...}.
   */
  function syncRows(tbody, rows, items, key, build) {
    const seen = new Set();
    items.forEach((item, index) => {
      const k = key(item);
      seen.add(k);
      const sig = JSON.stringify(item);
      let entry = rows.get(k);
      if (!entry || entry.sig !== sig) {
        const fresh = { sig, ...build(item) };
        if (entry) entry.row.replaceWith(fresh.row);
        entry = fresh;
        rows.set(k, entry);
      }
      const at = tbody.children[index];
      if (at !== entry.row) tbody.insertBefore(entry.row, at || null);
    });
    for (const [k, entry] of rows) {
      if (!seen.has(k)) {
        entry.row.remove();
        rows.delete(k);
      }
    }
  }

  const isAdmin = () => state.me && state.me.role === "admin";
  const canPublish = () => state.me && (state.me.role === "admin" || state.me.role === "publisher");

  // ---------------------------------------------------------------------------- files

  async function loadFiles() {
    const q = state.query ? "&q=" + encodeURIComponent(state.query) : "";
    const data = await api("GET", "files?limit=200" + q);
    const shown = data.files.length;
    $("files-count").textContent =
      shown < data.total ? `(${shown} of ${data.total})` : `(${data.total})`;
    $("files-empty").hidden = shown > 0;
    syncRows($("files-body"), state.fileRows, data.files, (f) => f.id, buildFileRow);
    applyLive();
  }

  /** Private files: the HTTP link goes through the caller's passkey, never the token. */
  function downloadUrl(file) {
    if (!file.private || !state.me) return file.url;
    return file.url.replace(`/f/${file.id}/`, `/k/${state.me.passkey}/${file.id}/`);
  }

  async function saveTorrent(file, url, suffix) {
    const resp = await fetch(url, { headers: { Authorization: "Bearer " + state.token } });
    if (!resp.ok) {
      let why = resp.statusText;
      try {
        why = (await resp.json()).error || why;
      } catch (_) {
        /* not JSON */
      }
      throw new ApiError(resp.status, `${why} (HTTP ${resp.status})`);
    }
    const blob = await resp.blob();
    const link = el("a", { download: file.name + suffix });
    link.href = URL.createObjectURL(blob);
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  function torrentLink(file, url, label, suffix) {
    const on = file.private
      ? {
          click: (ev) => {
            ev.preventDefault();
            act("download of the .torrent", () => saveTorrent(file, url, suffix));
          },
        }
      : undefined;
    return el("a", { href: url, text: label, on, title: label + " file" });
  }

  function buildFileRow(file) {
    const cells = {};
    const live = (name) => (cells[name] = el("td", { class: "num", "data-col": name, text: "–" }));
    const hashes = el("td", { class: "hashes" });
    for (const [label, h] of [
      ["v1", file.info_hash_v1],
      ["v2", file.info_hash_v2],
      ["v1 .torrent", file.info_hash_v1_torrent],
    ]) {
      if (h) hashes.append(el("div", { title: h }, el("span", { class: "muted", text: label + " " }), el("code", { text: shortHash(h) })));
    }
    const magnet = el("a", {
      href: file.magnet_url,
      text: "magnet",
      title: "magnet link",
      on: {
        click: (ev) => {
          ev.preventDefault();
          act("getting the magnet link", async () => {
            const full = await api("GET", "files/" + encodeURIComponent(file.id));
            if (!full.magnet) throw new Error("the hub gave no magnet link for this file");
            window.location.href = safeUrl(full.magnet);
          });
        },
      },
    });
    const links = el(
      "td",
      { class: "links" },
      el("a", { href: downloadUrl(file), text: "HTTP", title: "plain HTTP download" }),
      torrentLink(file, file.torrent_url, ".torrent", ".torrent"),
      torrentLink(file, file.torrent_v1_url, "v1", ".v1.torrent"),
      magnet,
    );
    const peers = el(
      "td",
      { class: "num", title: "seeders / leechers" },
      (cells.seeders = el("span", { "data-col": "seeders", text: "–" })),
      " / ",
      (cells.leechers = el("span", { "data-col": "leechers", text: "–" })),
    );
    const mayDelete = isAdmin() || (canPublish() && file.published_by === state.me.id);
    const del = mayDelete
      ? el("button", {
          type: "button",
          class: "danger small",
          text: "Delete",
          "data-action": "delete-file",
          on: { click: () => deleteFile(file) },
        })
      : null;
    const row = el(
      "tr",
      { "data-file-id": file.id, "data-name": file.name, class: file.private ? "private" : null },
      el(
        "td",
        { class: "name" },
        el("div", { text: file.name, class: "fname", title: file.name }),
        el("div", { class: "muted small" }, file.id, file.private ? el("span", { class: "badge", text: "private" }) : null),
      ),
      el("td", { class: "num", text: fmtBytes(file.size), title: `${file.size} bytes` }),
      el("td", { text: file.collection ?? "—" }),
      el("td", { class: "when", title: file.created }, ...fmtWhen(file.created)),
      hashes,
      links,
      peers,
      live("http_bytes"),
      live("http_rate"),
      live("seeder_uploaded"),
      live("seeder_upload_rate"),
      el("td", {}, del),
    );
    return { row, cells, file };
  }

  async function deleteFile(file) {
    if (!window.confirm(`Delete ${file.name} (${file.id}) from the hub? Its swarm stops here.`)) return;
    await act("delete", async () => {
      await api("DELETE", "files/" + encodeURIComponent(file.id));
      showMessage(`Deleted ${file.name}.`, "ok");
      await loadFiles();
    });
  }

  // ---------------------------------------------------------------------------- live numbers

  async function refreshLive() {
    const data = await api("GET", "live");
    const now = performance.now();
    const prev = state.live;
    const dt = prev ? (now - prev.t) / 1000 : 0;
    const rate = (cur, old) => (dt > 0.2 && old !== undefined ? Math.max(0, (cur - old) / dt) : null);
    const files = new Map(data.files.map((f) => [f.id, f]));
    const httpRates = new Map();
    for (const f of data.files) {
      const r = rate(f.http_bytes, prev && prev.http.get(f.id));
      httpRates.set(f.id, r ?? (prev ? prev.httpRates.get(f.id) ?? 0 : 0));
    }
    const t = data.totals;
    const httpRate = rate(t.http_bytes_served, prev && prev.httpTotal) ?? (prev ? prev.httpRate : 0);
    state.live = {
      t: now,
      http: new Map(data.files.map((f) => [f.id, f.http_bytes])),
      httpTotal: t.http_bytes_served,
      httpRate,
      httpRates,
      files,
    };
    $("t-http-bytes").textContent = fmtBytes(t.http_bytes_served);
    $("t-http-rate").textContent = fmtRate(httpRate);
    $("t-http-active").textContent = `${t.http_active_transfers} active`;
    $("t-http-rejected").textContent = String(t.http_rejected);
    $("t-seed-bytes").textContent = fmtBytes(t.seeder_uploaded);
    $("t-seed-rate").textContent = fmtRate(t.seeder_upload_rate);
    $("t-hub-rate").textContent = fmtRate(httpRate + t.seeder_upload_rate);
    applyLive();
  }

  /** Put the latest live numbers into the file rows (also right after a row is rebuilt). */
  function applyLive() {
    const live = state.live;
    if (!live) return;
    for (const [id, entry] of state.fileRows) {
      const f = live.files.get(id);
      const c = entry.cells;
      if (!f) continue;
      c.seeders.textContent = String(f.seeders);
      c.leechers.textContent = String(f.leechers);
      c.http_bytes.textContent = fmtBytes(f.http_bytes);
      c.http_bytes.title = `${f.http_bytes} bytes`;
      c.http_rate.textContent = fmtRate(live.httpRates.get(id) ?? 0);
      c.seeder_uploaded.textContent = fmtBytes(f.seeder_uploaded);
      c.seeder_uploaded.title = `${f.seeder_uploaded} bytes`;
      c.seeder_upload_rate.textContent = fmtRate(f.seeder_upload_rate);
      entry.row.classList.toggle("active", f.leechers > 0 || f.seeder_upload_rate > 0 || (live.httpRates.get(id) ?? 0) > 0);
    }
  }

  // ---------------------------------------------------------------------------- publishing

  function upload(file, collection, onProgress) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      if (collection) form.append("collection", collection);
      form.append("file", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", new URL("files", API));
      xhr.setRequestHeader("Authorization", "Bearer " + state.token);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
      });
      xhr.addEventListener("load", () => {
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch (_) {
          data = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && data) resolve({ status: xhr.status, file: data });
        else {
          const why = data && typeof data.error === "string" ? data.error : xhr.statusText;
          reject(new ApiError(xhr.status, `${why} (HTTP ${xhr.status})`));
        }
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, "the connection to the hub failed")));
      xhr.addEventListener("abort", () => reject(new ApiError(0, "the upload was aborted")));
      xhr.send(form);
    });
  }

  async function onPublish(ev) {
    ev.preventDefault();
    const input = $("publish-file");
    const file = input.files && input.files[0];
    if (!file) return showMessage("Choose a file to publish.");
    const progress = $("publish-progress");
    const status = $("publish-status");
    const button = $("publish-button");
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    status.textContent = "uploading…";
    try {
      const result = await upload(file, $("publish-collection").value, (done, total) => {
        progress.value = total ? Math.round((100 * done) / total) : 100;
        status.textContent =
          done < total ? `${fmtBytes(done)} of ${fmtBytes(total)}` : "hashing on the hub…";
      });
      const f = result.file;
      status.textContent = "";
      showMessage(
        result.status === 201
          ? `Published ${f.name} as ${f.id}.`
          : `${f.name} was already published (${f.id}).`,
        "ok",
      );
      input.value = "";
      await loadFiles();
      await refreshLive();
    } catch (err) {
      status.textContent = "";
      showMessage(`Publishing ${file.name} failed: ${err.message}`);
    } finally {
      button.disabled = false;
      progress.hidden = true;
    }
  }

  // ---------------------------------------------------------------------------- collections

  async function loadCollections() {
    const data = await api("GET", "collections");
    const items = data.collections;
    $("collections-empty").hidden = items.length > 0;
    syncRows($("collections-body"), state.collectionRows, items, (c) => c.name, buildCollectionRow);
    const select = $("publish-collection");
    const keep = select.value;
    const options = [el("option", { value: "", text: "— none (public) —" })];
    for (const c of items) {
      options.push(el("option", { value: c.name, text: c.private ? `${c.name} (private)` : c.name }));
    }
    const sig = JSON.stringify(items.map((c) => [c.name, c.private]));
    if (select.dataset.sig !== sig) {
      select.replaceChildren(...options);
      select.dataset.sig = sig;
      select.value = items.some((c) => c.name === keep) ? keep : "";
    }
  }

  function buildCollectionRow(c) {
    const del = isAdmin()
      ? el("button", {
          type: "button",
          class: "danger small",
          text: "Delete",
          title: c.files ? "only empty collections can be deleted" : null,
          on: {
            click: async () => {
              if (!window.confirm(`Delete the collection ${c.name}?`)) return;
              await act("delete", async () => {
                await api("DELETE", "collections/" + encodeURIComponent(c.name));
                showMessage(`Deleted the collection ${c.name}.`, "ok");
                await loadCollections();
              });
            },
          },
        })
      : null;
    const row = el(
      "tr",
      { "data-collection": c.name },
      el("td", { text: c.name }),
      el("td", {}, c.private ? el("span", { class: "badge", text: "private" }) : "public"),
      el("td", { class: "num", text: String(c.files) }),
      el("td", { text: fmtTime(c.created), title: c.created }),
      el("td", {}, del),
    );
    return { row };
  }

  async function onCreateCollection(ev) {
    ev.preventDefault();
    const name = $("collection-name").value.trim();
    const priv = $("collection-private").checked;
    await act("creating the collection", async () => {
      const c = await api("POST", "collections", { name, private: priv });
      $("collection-name").value = "";
      $("collection-private").checked = false;
      showMessage(`Created the ${c.private ? "private" : "public"} collection ${c.name}.`, "ok");
      await loadCollections();
    });
  }

  // ---------------------------------------------------------------------------- tokens

  async function loadTokens() {
    if (!isAdmin()) return;
    const data = await api("GET", "tokens");
    const items = [...data.tokens].sort((a, b) => (a.created < b.created ? 1 : -1));
    syncRows($("tokens-body"), state.tokenRows, items, (t) => t.id, buildTokenRow);
  }

  function buildTokenRow(t) {
    const self = state.me && state.me.id === t.id;
    const revoke = t.revoked_at
      ? null
      : el("button", {
          type: "button",
          class: "danger small",
          text: "Revoke",
          "data-action": "revoke",
          on: { click: () => revokeToken(t) },
        });
    const row = el(
      "tr",
      { "data-token-id": t.id, class: t.revoked_at ? "revoked" : null },
      el("td", {}, el("code", { text: t.id }), self ? el("span", { class: "badge", text: "you" }) : null),
      el("td", { text: t.role }),
      el("td", { text: t.label || "—" }),
      el("td", { text: fmtTime(t.created), title: t.created }),
      el("td", { "data-col": "revoked", text: t.revoked_at ? fmtTime(t.revoked_at) : "—", title: t.revoked_at }),
      el("td", {}, revoke),
    );
    return { row };
  }

  async function revokeToken(t) {
    const who = t.label ? `${t.label} (${t.id})` : t.id;
    if (!window.confirm(`Revoke the ${t.role} token ${who}? It stops working at once.`)) return;
    await act("revoking the token", async () => {
      await api("POST", `tokens/${encodeURIComponent(t.id)}/revoke`);
      showMessage(`Revoked the token ${who}.`, "ok");
      await loadTokens();
    });
  }

  async function onCreateToken(ev) {
    ev.preventDefault();
    const role = $("token-role").value;
    const label = $("token-label").value.trim();
    await act("creating the token", async () => {
      const t = await api("POST", "tokens", { role, label });
      $("token-label").value = "";
      $("new-token-label").textContent = `${t.label || "(no label)"} — ${t.role}, id ${t.id}`;
      $("new-token-value").value = t.token;
      $("new-token").hidden = false;
      $("new-token-value").focus();
      $("new-token-value").select();
      await loadTokens();
    });
  }

  // ---------------------------------------------------------------------------- session

  async function refreshAll() {
    await Promise.all([loadFiles(), loadCollections(), loadTokens()]);
    await refreshLive();
  }

  async function tick(generation) {
    if (generation !== state.generation) return;
    try {
      await refreshAll();
      if (generation !== state.generation) return;
      if (state.refreshFailed) clearMessage();
      state.refreshFailed = false;
      const d = new Date();
      $("refresh-state").textContent = `updated ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    } catch (err) {
      if (generation !== state.generation) return;
      state.refreshFailed = true;
      const hint = err.status === 401 || err.status === 403 ? "; sign in again with a valid token" : "";
      showMessage(`Refreshing failed: ${err.message}${hint}`);
    } finally {
      if (generation === state.generation) {
        state.timer = setTimeout(() => tick(generation), REFRESH_MS);
      }
    }
  }

  function showSignedIn(signedIn) {
    $("signin").hidden = signedIn;
    $("whoami").hidden = !signedIn;
    $("app").hidden = !signedIn;
    $("signed-out").hidden = signedIn;
    for (const node of document.querySelectorAll(".admin-only")) node.hidden = !(signedIn && isAdmin());
    $("publish").hidden = !(signedIn && canPublish());
    document.body.dataset.role = signedIn && state.me ? state.me.role : "";
  }

  function reset() {
    clearTimeout(state.timer);
    state.generation += 1;
    state.live = null;
    state.refreshFailed = false;
    for (const rows of [state.fileRows, state.collectionRows, state.tokenRows]) rows.clear();
    for (const id of ["files-body", "collections-body", "tokens-body"]) $(id).replaceChildren();
    $("new-token").hidden = true;
    $("new-token-value").value = "";
  }

  async function signIn(token) {
    reset();
    state.token = token;
    try {
      state.me = await api("GET", "me");
    } catch (err) {
      state.token = null;
      state.me = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedIn(false);
      throw err;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("me-role").textContent = state.me.role;
    $("me-label").textContent = state.me.label ? `(${state.me.label})` : `(token ${state.me.id})`;
    showSignedIn(true);
    clearMessage();
    const generation = state.generation;
    await tick(generation);
  }

  function signOut() {
    reset();
    state.token = null;
    state.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignedIn(false);
    clearMessage();
  }

  function init() {
    $("signin").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("token-input");
      const token = input.value.trim();
      input.value = "";
      signIn(token).catch((err) => showMessage(`Sign-in failed: ${err.message}`));
    });
    $("signout").addEventListener("click", signOut);
    $("message-close").addEventListener("click", clearMessage);
    $("publish").addEventListener("submit", onPublish);
    $("collection-form").addEventListener("submit", onCreateCollection);
    $("token-form").addEventListener("submit", onCreateToken);
    $("new-token-hide").addEventListener("click", () => {
      $("new-token").hidden = true;
      $("new-token-value").value = "";
    });
    $("new-token-value").addEventListener("focus", (ev) => ev.target.select());
    let debounce = null;
    $("search").addEventListener("input", (ev) => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        state.query = ev.target.value.trim();
        act("search", loadFiles);
      }, 250);
    });
    showSignedIn(false);
    if (state.token) {
      signIn(state.token).catch((err) => showMessage(`Sign-in failed: ${err.message}`));
    }
  }

  init();
})();
