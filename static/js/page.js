// What every piece of the room page shares: its elements, who is looking, a small event
// bus between the pieces, the scroll position, and the two ways the page speaks (a notice
// on screen, an announcement for screen readers). No behaviour of its own.

export const body = document.body;
export const me = body.dataset.me;
export const roomSlug = body.dataset.room;
export const $ = (id) => document.getElementById(id);
export const live = $("live");  // the conversation, whose element holds the socket
export const scroller = $("scroller");
export const messages = $("messages");  // #earlier (older pages) then #log (the live list)
export const log = $("log");
export const earlier = $("earlier");
export const composer = $("composer");
export const textarea = composer.querySelector("textarea");

// -- events between the pieces ------------------------------------------------------------
// "messages" {nodes, live}: messages were added (live at the end, or a page loaded);
// "changed" {node}: a message was redrawn in place (edited, reactions); "removed" {id}: deleted;
// "frame" {data}: a JSON frame from the server; "connection" {state}; "unread-changed".
const bus = new EventTarget();
export function emit(name, detail = {}) { bus.dispatchEvent(new CustomEvent(name, { detail })); }
export function on(name, fn) { bus.addEventListener(name, (e) => fn(e.detail)); }

// -- messages ---------------------------------------------------------------------------------
export function lastId() {  // older pages come first in the page, so the last one is the newest
  const all = messages.querySelectorAll(".msg[data-id]");
  return all.length ? Number(all[all.length - 1].dataset.id) : 0;
}
// The socket's `since` when the page was made: the newest message on it, or on a page far back
// in history (a permalink's), the newest change of the server then, above all the page holds.
export const openedSince = Number(new URL(live.getAttribute("hx-ws:connect"), location.href)
  .searchParams.get("since")) || 0;
let newestEvent = 0;
/** An event of this room was seen (a change shown, or a message left for its page to bring). */
export function saw(id) { if (id > newestEvent) newestEvent = id; }
/** Where a reconnect resumes (its `since`): after everything this tab has seen. Message ids and
 * change ids are one sequence, so one number says it. */
export function lastSeen() { return Math.max(lastId(), newestEvent, openedSince); }
export const newId = () => (crypto.randomUUID ? crypto.randomUUID() :
  Date.now().toString(36) + Math.random().toString(36).slice(2));

// -- the scroll position: stuck to the newest message unless the reader scrolled away ----------
export const view = {
  stick: true,
  atEnd() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40; },
  toEnd() { scroller.scrollTop = scroller.scrollHeight; view.stick = true; },
  /** The first message at least partly on screen (other than `skip`), and where its top is. */
  anchor(skip = null) {
    const top = scroller.getBoundingClientRect().top;
    for (const m of messages.querySelectorAll(".msg")) {
      if (m === skip) continue;
      const r = m.getBoundingClientRect();
      if (r.bottom > top) return { el: m, top: r.top };
    }
    return null;
  },
  /** Change the list without moving what the reader sees: a reader stuck to the end stays there
   * (unless `follow` is false), any other keeps the first message on screen where it is. */
  keep(change, { skip = null, follow = true } = {}) {
    // Asked of the layout, not of `stick`: the scroll event that updates it may still be on its way.
    if (follow && view.atEnd()) { change(); view.toEnd(); return; }
    const before = view.anchor(skip);
    change();
    if (before?.el.isConnected) scroller.scrollTop += before.el.getBoundingClientRect().top - before.top;
  },
};
scroller.addEventListener("scroll", () => { view.stick = view.atEnd(); }, { passive: true });

// -- speaking ------------------------------------------------------------------------------------
const announcer = $("announcer");
/** Read out once by screen readers (a polite status), shown nowhere. */
export function announce(text) {
  announcer.textContent = "";
  setTimeout(() => { announcer.textContent = text; }, 50);
}
const notice = $("notice");
let noticeTimer = 0;
/** One notice at a time on screen: a new one replaces the last. */
export function showNotice(text) {
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 5000);
}
