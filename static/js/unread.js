// Unread in the room on screen: a "New messages" line above the first unread message when
// the room opens (scrolled so it shows), a "N new messages" pill while messages arrive
// below the screen, and read marks that move only as messages actually come on screen. A page
// far back in history (a permalink's, with newer pages below it) has no line, opens where the
// permalink points, and counts only what arrives after it opened as new.
import { $, log, me, messages, on, openedSince, scroller, view } from "./page.js";

const readmark = $("readmark");
const pill = $("new-pill");
// When the page opened, its newest `unreadCount` messages were unread (all by others: one's
// own post moves one's read mark). Where they begin is known once that many are loaded.
const unreadCount = Number(messages.dataset.unreadCount || 0);
const newestAtOpen = Number(messages.dataset.newest || 0);
const far = Boolean($("later"));
let readAfter = 0;  // the newest message read before the page opened (0: not loaded yet)
let told = 0;       // the newest id the server has as read
let seen = 0;       // the newest id that has been on screen
let timer = 0;
let queued = false;

function findReadMark() {
  const opened = [...messages.querySelectorAll(".msg[data-id]")].filter((m) => Number(m.dataset.id) <= newestAtOpen);
  readAfter = opened.length > unreadCount ? Number(opened[opened.length - unreadCount - 1].dataset.id) : 0;
  told = Math.max(told, readAfter);
}
const isUnread = (m) => Number(m.dataset.id) > readAfter && m.dataset.author !== me;

/** The newest message (with an id) whose top is on screen. */
function newestOnScreen() {
  const bottom = scroller.getBoundingClientRect().bottom;
  const all = messages.querySelectorAll(".msg[data-id]");
  for (let i = all.length - 1; i >= 0; i--) {
    if (all[i].getBoundingClientRect().top < bottom - 8) return Number(all[i].dataset.id);
  }
  return 0;
}

function placeLine(before) {
  const line = $("unread-line") || document.createElement("div");
  line.id = "unread-line";
  line.className = "unread-line";
  line.setAttribute("role", "separator");
  line.setAttribute("aria-label", "New messages");
  line.innerHTML = "<span>New messages</span>";
  before.before(line);
  return line;
}

function tellServer(id) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (id <= told || document.hidden) return;
    told = id;
    readmark.querySelector("[name=message_id]").value = String(id);
    htmx.trigger(readmark, "chatd:read");
  }, 250);
}

/** What is on screen now is seen: the read mark follows it, and the pill counts the rest. */
export function update() {
  if (document.hidden) return;
  seen = Math.max(seen, newestOnScreen());
  if (seen > told) tellServer(seen);
  let below = 0;
  const all = log.querySelectorAll(".msg[data-id]");
  for (let i = all.length - 1; i >= 0 && Number(all[i].dataset.id) > seen; i--) if (isUnread(all[i])) below++;
  pill.hidden = below === 0 || view.atEnd();
  pill.textContent = `${below} new message${below === 1 ? "" : "s"} ↓`;
}

function schedule() {
  if (queued) return;
  queued = true;
  requestAnimationFrame(() => { queued = false; update(); });
}

function arrived(nodes) {
  const own = nodes.some((n) => n.dataset.author === me && n.dataset.clientId);
  const unseen = document.hidden || !(view.stick || own);
  if (unseen) {
    // The first message the reader has not seen gets the line, unless one is already below what they saw.
    const line = $("unread-line");
    const after = line?.nextElementSibling?.closest(".msg");
    const first = nodes.find((n) => n.dataset.author !== me);
    if (first && (!line || !after || Number(after.dataset.id) <= seen)) placeLine(first);
  } else {
    view.toEnd();
  }
  update();
}

/** An older page holds unread messages too: the line moves up to the first of them. */
function earlierUnread(nodes) {
  if (!$("unread-line") || readAfter) return;  // no line, or it is where it belongs
  findReadMark();
  const first = nodes.find((n) => n.dataset.id && isUnread(n));
  if (first) placeLine(first);
}

/** Where the page opens: at the "New messages" line if there is one, else at the end. */
function open() {
  if (far) { readAfter = openedSince; return; }
  findReadMark();
  if (unreadCount === 0) { view.toEnd(); return; }
  const first = [...log.querySelectorAll(".msg[data-id]")].find(isUnread);
  if (!first) { view.toEnd(); return; }
  const line = placeLine(first);
  view.toEnd();
  const top = line.getBoundingClientRect().top - scroller.getBoundingClientRect().top;
  if (top < 0 || top > scroller.clientHeight * 0.4) scroller.scrollTop += top - 48;
  view.stick = view.atEnd();
}

export function init() {
  open();
  on("messages", ({ nodes, live }) => { if (live) arrived(nodes); else earlierUnread(nodes); });
  on("removed", schedule);
  scroller.addEventListener("scroll", schedule, { passive: true });
  document.addEventListener("visibilitychange", update);
  window.addEventListener("resize", schedule);
  pill.addEventListener("click", () => { view.toEnd(); update(); });
  update();
}
