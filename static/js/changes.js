// Conversations that change: the socket's frames for an edited message, or one whose reactions
// changed, redraw it in place; a deleted one is taken out. Every tab gets them, the acting one
// included. The list keeps its days and groups and the reader's place (stuck to the end, or
// the first message on screen where it was).
//
// The element of a redrawn message stays, with what the page added to it (the focus, an open
// editor, the toolbar: the children marked data-client), and takes the server's new markup; a
// frame may come twice (a replay after a reconnect), so each message remembers the newest change
// it shows. A change to a message that is not on the page is kept for a while: a page of history
// on its way may bring that message as it was before the change.
import { $, emit, messages, on, roomSlug, saw, textarea, view } from "./page.js";
import { arrange, detach } from "./arrange.js";

const OURS = ["tabindex", "aria-current", "data-change"];  // attributes the page set, not the server
const OUR_CLASSES = ["current", "editing"];
const KEPT = 500;
const waiting = new Map();  // message id -> {event, html}: a change of a message not on the page (html null: deleted)

function parse(html) {
  const t = document.createElement("template");
  t.innerHTML = html.trim();  // the server's own escaped HTML, from this origin
  const el = t.content.firstElementChild;
  return el && el.classList.contains("msg") ? el : null;
}

/** The message element takes the server's new markup and keeps what the page added. */
function morph(el, fresh) {
  const classes = OUR_CLASSES.filter((c) => el.classList.contains(c));
  for (const a of [...el.attributes]) {
    if (!fresh.hasAttribute(a.name) && !OURS.includes(a.name)) el.removeAttribute(a.name);
  }
  for (const a of fresh.attributes) if (!OURS.includes(a.name)) el.setAttribute(a.name, a.value);
  el.classList.add(...classes);
  for (const child of [...el.childNodes]) {
    if (!(child.nodeType === 1 && child.hasAttribute("data-client"))) child.remove();
  }
  el.prepend(...fresh.childNodes);
}

function remember(id, event, html) {
  waiting.delete(id);
  waiting.set(id, { event, html });
  if (waiting.size > KEPT) waiting.delete(waiting.keys().next().value);
}

function update(id, event, html) {
  const el = $(`message-${id}`);
  if (!el) { remember(id, event, html); return; }
  if (Number(el.dataset.change || 0) >= event) return;  // shown already
  const fresh = parse(html);
  if (!fresh) return;
  const focused = el.contains(document.activeElement);
  view.keep(() => {
    morph(el, fresh);
    el.dataset.change = String(event);
    arrange([el]);
  });
  if (focused && !el.contains(document.activeElement)) el.focus({ preventScroll: true });
  emit("changed", { node: el });
}

function remove(id, event) {
  const el = $(`message-${id}`);
  if (!el) { remember(id, event, null); return; }
  let next = null;
  if (el.contains(document.activeElement)) {  // the focus goes to a neighbour, not to the page
    const all = [...messages.querySelectorAll(".msg[data-id]")];
    const at = all.indexOf(el);
    next = all[at + 1] || all[at - 1] || textarea;
  }
  view.keep(() => detach(el), { skip: el });
  next?.focus({ preventScroll: true });
  emit("removed", { id });
}

function frame(f) {
  if (f.room !== roomSlug || typeof f.id !== "number") return;
  if (f.message_updated !== undefined) update(f.message_updated, f.id, f.html);
  else if (f.message_deleted !== undefined) remove(f.message_deleted, f.id);
  else return;
  saw(f.id);
}

/** Messages just put in (a page of history) may have changed while they were on their way. */
function catchUp(nodes) {
  for (const n of nodes) {
    const id = Number(n.dataset.id);
    const change = waiting.get(id);
    if (!change || !n.isConnected) continue;
    waiting.delete(id);
    change.html === null ? remove(id, change.event) : update(id, change.event, change.html);
  }
}

export function init() {
  on("frame", frame);
  // After every other piece has handled the new messages.
  on("messages", ({ nodes }) => { if (waiting.size) queueMicrotask(() => catchUp(nodes)); });
}
