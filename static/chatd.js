// chatd's page behaviour. htmx does the talking; this file handles the keyboard,
// pending sends, unread counts, typing, notifications and the connection badge.
(() => {
  "use strict";
  const live = document.getElementById("live");
  if (!live) return;
  const body = document.body;
  const me = body.dataset.me;
  const roomSlug = body.dataset.room;
  const scroller = document.getElementById("scroller");
  const messages = document.getElementById("messages");
  const composer = document.getElementById("composer");
  const textarea = composer.querySelector("textarea");
  const readmark = document.getElementById("readmark");
  const typingmark = document.getElementById("typingmark");
  const connState = document.getElementById("conn-state");
  const typingBox = document.getElementById("typing");
  const notifyButton = document.getElementById("notify");
  const baseTitle = document.title;
  const typers = new Map();
  let stick = true;
  let lastRead = 0;
  let readTimer = 0;
  let unseenHere = 0;

  const lastId = () => {
    const all = messages.querySelectorAll(".msg[data-id]");
    return all.length ? Number(all[all.length - 1].dataset.id) : 0;
  };
  const newId = () => (crypto.randomUUID ? crypto.randomUUID() :
    Date.now().toString(36) + Math.random().toString(36).slice(2));

  // -- connection state and catch-up ------------------------------------------------
  function setState(state, text) {
    connState.dataset.state = state;
    connState.textContent = text;
    body.classList.toggle("offline", state !== "online");
  }
  document.addEventListener("htmx:ws:before:connection", (e) => {
    const connection = e.detail.connection;
    const url = new URL(connection.url);
    url.searchParams.set("since", String(lastId()));  // the server replays what we missed
    connection.url = url.toString();
    setState("connecting", "connecting…");
  });
  document.addEventListener("htmx:ws:after:connection", () => setState("online", "live"));
  let roomGone = false;
  document.addEventListener("htmx:ws:close", (e) => {
    if (e.detail.code === 1008) setState("offline", roomGone ? "no access" : "signed out");
    else setState("connecting", "reconnecting…");
  });

  // -- composing ------------------------------------------------------------------------
  function autosize() {
    textarea.style.height = "auto";
    textarea.style.height = Math.min(textarea.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }
  // Typing: at most one small frame per 2 s while there is a draft; never the draft itself.
  let typingSent = 0;
  textarea.addEventListener("input", () => {
    autosize();
    const now = Date.now();
    if (textarea.value.trim() && now - typingSent > 2000) {
      typingSent = now;
      htmx.trigger(typingmark, "chatd:typing");
    }
  });
  textarea.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      composer.requestSubmit();
    }
  });
  document.addEventListener("htmx:ws:before:message:outgoing", (e) => {
    const values = e.detail.message.values;
    if (values.type !== "send") return;
    const text = String(values.body || "");
    if (!text.trim()) { e.detail.cancelled = true; return; }
    values.client_id = newId();
    addPending(values.client_id, text);
    textarea.value = "";
    typingSent = 0;
    autosize();
    textarea.focus();
  });
  function addPending(cid, text) {
    const el = document.createElement("article");
    el.className = "msg mine pending";
    el.id = "pending-" + cid;
    const head = document.createElement("header");
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = me;
    const when = document.createElement("time");
    when.textContent = "sending…";
    head.append(who, " ", when);
    const text_ = document.createElement("div");
    text_.className = "body";
    text_.textContent = text;
    el.append(head, text_);
    messages.append(el);
    scrollToEnd();
  }
  messages.addEventListener("click", (e) => {
    const failed = e.target.closest(".msg.failed");
    if (!failed) return;
    textarea.value = failed.querySelector(".body").textContent;
    failed.remove();
    autosize();
    textarea.focus();
  });

  // -- messages arriving -------------------------------------------------------------------
  function localize(el) {
    const t = el.querySelector("time[datetime]");
    if (!t) return;
    const d = new Date(t.getAttribute("datetime"));
    if (isNaN(d)) return;
    t.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    t.title = d.toLocaleString();
  }
  messages.querySelectorAll(".msg[data-id]").forEach(localize);
  new MutationObserver((mutations) => {
    let fresh = false, own = false;
    for (const m of mutations) {
      for (const n of m.addedNodes) {
        if (n.nodeType !== 1 || !n.classList.contains("msg") || !n.dataset.id) continue;
        localize(n);
        if (n.dataset.clientId) {
          document.getElementById("pending-" + n.dataset.clientId)?.remove();
          own = true;
        }
        const next = n.nextElementSibling;
        if (next && !next.classList.contains("pending")) continue;  // older history, prepended
        fresh = true;
        stopTyping(n.dataset.author);
        if (n.dataset.author !== me && document.hidden) {
          unseenHere += 1;
          if (n.classList.contains("mention") || body.dataset.kind === "dm") {
            notify(n.dataset.author, n.querySelector(".body").textContent, location.pathname);
          }
        }
      }
    }
    if (fresh) {
      if (stick || own) scrollToEnd();
      scheduleRead();
      updateTitle();
    }
  }).observe(messages, { childList: true });
  scroller.addEventListener("scroll", () => {
    stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  }, { passive: true });
  function scrollToEnd() { scroller.scrollTop = scroller.scrollHeight; stick = true; }

  // -- read marks and unread counts -----------------------------------------------------------
  function scheduleRead() {
    if (document.hidden) return;
    clearTimeout(readTimer);
    readTimer = setTimeout(() => {
      const id = lastId();
      if (id <= lastRead || document.hidden) return;
      lastRead = id;
      readmark.querySelector("[name=message_id]").value = String(id);
      htmx.trigger(readmark, "chatd:read");
    }, 250);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) { unseenHere = 0; scheduleRead(); }
    updateTitle();
  });
  function setUnread(slug, count) {
    if (slug === roomSlug) return;
    const badge = document.querySelector(`[data-unread="${CSS.escape(slug)}"]`);
    if (!badge) return;
    badge.textContent = count > 0 ? String(count) : "";
    badge.closest("a")?.classList.toggle("has-unread", count > 0);
  }
  const left = new Set((body.dataset.left || "").split(" ").filter(Boolean));
  function bumpUnread(ev) {
    let badge = document.querySelector(`[data-unread="${CSS.escape(ev.unread)}"]`);
    if (!badge && left.has(ev.unread)) return;  // a public room this person left stays out
    if (!badge) badge = addToSidebar(ev);
    setUnread(ev.unread, (Number(badge.textContent) || 0) + 1);
    if (document.hidden && (ev.mention || ev.kind === "dm")) {
      const where = ev.kind === "dm" ? ev.from : `${ev.from} in #${ev.name}`;
      notify(where, ev.text, ev.kind === "dm" ? `/dm/${ev.from}` : `/r/${ev.unread}`);
    }
  }
  function addToSidebar(ev) {
    const dm = ev.kind === "dm";
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = dm ? `/dm/${encodeURIComponent(ev.from)}` : `/r/${encodeURIComponent(ev.unread)}`;
    const sigil = document.createElement("span");
    sigil.className = ev.kind === "private" ? "sigil lock" : "sigil";
    sigil.textContent = dm ? "@" : ev.kind === "private" ? "" : "#";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = dm ? ev.from : ev.name;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.unread = ev.unread;
    a.append(sigil, label, badge);
    li.append(a);
    document.getElementById(dm ? "dm-list" : "room-list").append(li);
    return badge;
  }
  function updateTitle() {
    let total = unseenHere;
    document.querySelectorAll(".badge[data-unread]").forEach((b) => { total += Number(b.textContent) || 0; });
    document.title = document.hidden && total > 0 ? `(${total}) ${baseTitle}` : baseTitle;
  }

  // -- access that ends: the room leaves the sidebar; on its own page, the page says so --------
  function roomRemoved(slug, here) {
    document.querySelector(`[data-unread="${CSS.escape(slug)}"]`)?.closest("li")?.remove();
    if (!here) return;
    roomGone = true;
    composer.hidden = true;
    const note = document.createElement("p");
    note.className = "archived-note";
    note.setAttribute("role", "alert");
    note.textContent = "You no longer have access to this room.";
    composer.before(note);
  }

  // -- typing -------------------------------------------------------------------------------------
  function showTyping() {
    const names = [...typers.keys()];
    typingBox.textContent = names.length === 0 ? "" :
      names.length === 1 ? `${names[0]} is typing…` :
      names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : "Several people are typing…";
  }
  function startTyping(name) {
    clearTimeout(typers.get(name));
    typers.set(name, setTimeout(() => stopTyping(name), 4000));
    showTyping();
  }
  function stopTyping(name) {
    if (!typers.has(name)) return;
    clearTimeout(typers.get(name));
    typers.delete(name);
    showTyping();
  }

  // -- notifications ---------------------------------------------------------------------------------
  function notify(title, text, href) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const n = new Notification(title, { body: text, tag: href });
    n.onclick = () => { window.focus(); if (href !== location.pathname) location.href = href; n.close(); };
  }
  if ("Notification" in window && Notification.permission === "default") {
    notifyButton.hidden = false;
    notifyButton.addEventListener("click", () => {
      Notification.requestPermission().then(() => { notifyButton.hidden = true; });
    });
  }
  function toast(text) {
    const el = document.createElement("div");
    el.className = "toast";
    el.setAttribute("role", "status");
    el.textContent = text;
    document.body.append(el);
    setTimeout(() => el.remove(), 4000);
  }

  // -- data frames from the server (JSON without HTML) ----------------------------------------------------
  document.addEventListener("htmx:ws:after:message:incoming", (e) => {
    const data = e.detail.message.data;
    if (typeof data !== "string" || data[0] !== "{") return;
    let ev;
    try { ev = JSON.parse(data); } catch { return; }
    if (ev.unread) bumpUnread(ev);
    if (ev.unread_set) for (const [slug, n] of Object.entries(ev.unread_set)) setUnread(slug, n);
    if (ev.unread_all) for (const [slug, n] of Object.entries(ev.unread_all)) setUnread(slug, n);
    if (ev.typing && ev.room === roomSlug && ev.typing !== me) startTyping(ev.typing);
    if (ev.error) {
      const pending = ev.client_id && document.getElementById("pending-" + ev.client_id);
      if (pending) {
        pending.classList.add("failed");
        pending.querySelector("time").textContent = "not sent: " + ev.error + " (click to edit)";
      }
      toast(ev.error);
    }
    if (ev.room_removed) roomRemoved(ev.room_removed, ev.here);
    if (ev.reload) location.reload();
    updateTitle();
  });

  scrollToEnd();
  autosize();
  scheduleRead();
})();
