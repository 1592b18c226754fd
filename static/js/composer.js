// The composer: Enter sends (Shift+Enter is a new line), a sent message shows at once as
// "sending…" until the server's copy replaces it, a refused one can be clicked to edit it
// again, typing is told at most every 2 s, and the draft of each room is kept in this
// browser across reloads and room switches until it is sent (or the person signs out).
import { $, composer, log, me, newId, on, roomSlug, showNotice, textarea, view } from "./page.js";
import { arrange } from "./arrange.js";

const typingmark = $("typingmark");
const pendingTemplate = $("pending-template");
const draftKey = `chatd:draft:${me}:${roomSlug}`;
let typingSent = 0;
let saveTimer = 0;

const store = (() => { try { return window.localStorage; } catch { return null; } })();
const saveDraft = () => {
  if (!store) return;
  try { textarea.value.trim() ? store.setItem(draftKey, textarea.value) : store.removeItem(draftKey); } catch { /* full or off */ }
};

function autosize() {
  textarea.style.height = "auto";
  textarea.style.height = Math.min(textarea.scrollHeight + 2, window.innerHeight * 0.4) + "px";
}

function addPending(cid, text) {
  const el = pendingTemplate.content.firstElementChild.cloneNode(true);
  el.id = "pending-" + cid;
  el.querySelector(".body").textContent = text;
  log.append(el);
  arrange([el]);
  view.toEnd();
}

export function init() {
  const draft = store?.getItem(draftKey);
  if (draft && !textarea.value) textarea.value = draft;
  textarea.addEventListener("input", () => {
    autosize();
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveDraft, 300);
    const now = Date.now();
    if (textarea.value.trim() && now - typingSent > 2000) {
      typingSent = now;
      htmx.trigger(typingmark, "chatd:typing");
    }
  });
  window.addEventListener("pagehide", saveDraft);
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
    clearTimeout(saveTimer);
    saveDraft();
    typingSent = 0;
    autosize();
    textarea.focus();
  });
  log.addEventListener("click", (e) => {
    const failed = e.target.closest(".msg.failed");
    if (!failed) return;
    textarea.value = failed.querySelector(".body").textContent;
    failed.remove();
    autosize();
    saveDraft();
    textarea.focus();
  });
  // The server's copy of a sent message arrived: the "sending…" one goes.
  on("messages", ({ nodes }) => {
    for (const n of nodes) if (n.dataset.clientId) $("pending-" + n.dataset.clientId)?.remove();
  });
  on("frame", (f) => {
    if (!f.error) return;
    const pending = f.client_id && $("pending-" + f.client_id);
    if (pending) {
      pending.classList.add("failed");
      pending.querySelector("time").textContent = `not sent: ${f.error} (click to edit)`;
    }
    showNotice(f.error);
  });
  // Signing out takes this browser's drafts with it (a shared computer keeps none).
  $("logout")?.addEventListener("submit", () => {
    if (!store) return;
    for (const key of Object.keys(store)) if (key.startsWith(`chatd:draft:${me}:`)) store.removeItem(key);
  });
  autosize();
  if (!composer.hidden && !matchMedia("(pointer: coarse)").matches) textarea.focus({ preventScroll: true });
}
