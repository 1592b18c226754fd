// Days and grouping: each message's time in the reader's time zone (the full date and time
// on hover and for screen readers), a separator at each new day ("Today", "Yesterday", then
// the date in the reader's locale), and a run of messages by one author within a few minutes
// drawn under one header. Runs over the messages just added, whether a page, an older page or
// one live message; the server's markup stays as it is apart from a class and a separator. A
// message redrawn in place is arranged again, and one taken out leaves no empty day behind.
import { earlier, log, messages, on } from "./page.js";

const GROUP_MS = 5 * 60 * 1000;
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

const stampOf = (msg) => {
  const t = msg.querySelector("time[datetime]");
  return t ? Date.parse(t.getAttribute("datetime")) : Date.now();  // a pending message: now
};
const dayKey = (ms) => { const d = new Date(ms); return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`; };

export function dayLabel(ms) {
  const d = new Date(ms);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(ms) === dayKey(today.getTime())) return "Today";
  if (dayKey(ms) === dayKey(yesterday.getTime())) return "Yesterday";
  const options = { weekday: "long", month: "long", day: "numeric" };
  if (d.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return d.toLocaleDateString(undefined, options);
}

function localize(msg) {
  const t = msg.querySelector("time[datetime]");
  if (!t || t.dataset.local) return;
  const ms = Date.parse(t.getAttribute("datetime"));
  if (Number.isNaN(ms)) return;
  const short = document.createElement("span");
  short.setAttribute("aria-hidden", "true");
  short.textContent = timeFormat.format(ms);
  const full = document.createElement("span");
  full.className = "visually-hidden";
  full.textContent = fullFormat.format(ms);
  t.replaceChildren(short, full);
  t.title = full.textContent;
  t.dataset.local = "1";
}

/** The message before this one on the page (across the older pages and the live list). */
function previousMessage(msg) {
  let el = msg.previousElementSibling;
  while (el && !el.classList.contains("msg")) el = el.previousElementSibling;
  if (el || msg.parentElement.id !== "log") return el;
  const older = earlier.querySelectorAll(".msg");
  return older.length ? older[older.length - 1] : null;
}

function nextMessage(msg) {
  let el = msg.nextElementSibling;
  while (el && !el.classList.contains("msg")) el = el.nextElementSibling;
  if (el || msg.parentElement.id === "log") return el;
  return log.querySelector(".msg");
}

/** What sits directly above a message, not counting the unread line. */
function above(msg) {
  let el = msg.previousElementSibling;
  if (el && el.classList.contains("unread-line")) el = el.previousElementSibling;
  return el;
}

function separator(ms) {
  const sep = document.createElement("h2");
  sep.className = "day";
  sep.dataset.day = dayKey(ms);
  sep.dataset.ms = String(ms);
  sep.textContent = dayLabel(ms);
  return sep;
}

function arrangeOne(msg) {
  localize(msg);
  const ms = stampOf(msg);
  const prev = previousMessage(msg);
  const prevMs = prev ? stampOf(prev) : null;
  const sameDay = prev !== null && dayKey(prevMs) === dayKey(ms);
  const sep = above(msg);
  const hasSep = sep && sep.classList.contains("day");
  // The first message of the room, or of a page whose older page is not loaded yet, starts a day too.
  if (!sameDay && !hasSep) {
    const line = msg.previousElementSibling?.classList.contains("unread-line") ? msg.previousElementSibling : msg;
    line.before(separator(ms));
  } else if (sameDay && hasSep) {
    sep.remove();
  }
  const direct = msg.previousElementSibling;  // a separator or the unread line breaks a run
  const adjacent = direct === prev || (direct === null && msg.parentElement.id === "log");
  const grouped = sameDay && adjacent && prev.dataset.author === msg.dataset.author && ms - prevMs < GROUP_MS;
  msg.classList.toggle("cont", grouped);
}

/** Arrange these messages (in page order) and the one after the last of them. */
export function arrange(nodes) {
  for (const n of nodes) arrangeOne(n);
  const last = nodes[nodes.length - 1];
  if (!last) return;
  const next = nextMessage(last);
  if (next) arrangeOne(next);
}

/** Take a message out of the list: its day's separator goes too when no message of that day is
 * left under it, the unread line moves down to the next message, and that one is grouped anew. */
export function detach(msg) {
  const next = nextMessage(msg);
  let sep = msg.previousElementSibling;
  const line = sep?.classList.contains("unread-line") ? sep : null;
  if (line) sep = line.previousElementSibling;
  msg.remove();
  if (line) next ? next.before(line) : line.remove();
  if (sep?.classList.contains("day")) {
    let below = sep.nextElementSibling;
    if (below?.classList.contains("unread-line")) below = below.nextElementSibling;
    const sameDay = below?.classList.contains("msg") && dayKey(stampOf(below)) === sep.dataset.day;
    if (!sameDay) sep.remove();
  }
  if (next) arrangeOne(next);
}

function relabel() {
  for (const sep of messages.querySelectorAll(".day")) sep.textContent = dayLabel(Number(sep.dataset.ms));
}

export function init() {
  arrange([...messages.querySelectorAll(".msg")]);
  on("messages", ({ nodes }) => arrange(nodes));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) relabel(); });  // "Today" after midnight
}
