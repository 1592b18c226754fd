// Telling the person while the tab is in the background: the unread total in the title,
// and a desktop notification for a mention or a direct message, once they allowed it
// (the "Enable notifications" item of the room menu asks).
import { $, body, me, on } from "./page.js";
import { unreadTotal } from "./sidebar.js";

const button = $("notify");
const baseTitle = document.title;
let unseenHere = 0;

function notify(title, text, href) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const n = new Notification(title, { body: text, tag: href });
  n.onclick = () => { window.focus(); if (href !== location.pathname) location.href = href; n.close(); };
}

function updateTitle() {
  const total = unseenHere + unreadTotal();
  document.title = document.hidden && total > 0 ? `(${total}) ${baseTitle}` : baseTitle;
}

export function init() {
  if ("Notification" in window && Notification.permission === "default") {
    button.hidden = false;
    button.addEventListener("click", () => {
      Notification.requestPermission().then(() => { button.hidden = true; });
    });
  }
  on("messages", ({ nodes, live }) => {
    if (!live || !document.hidden) return;
    for (const n of nodes) {
      if (n.dataset.author === me) continue;
      unseenHere += 1;
      if (n.classList.contains("mention") || body.dataset.kind === "dm") {
        notify(n.dataset.author, n.querySelector(".body").textContent, location.pathname);
      }
    }
    updateTitle();
  });
  on("frame", (f) => {
    if (!f.unread || !document.hidden || !(f.mention || f.kind === "dm")) return;
    const where = f.kind === "dm" ? f.from : `${f.from} in #${f.name}`;
    notify(where, f.text, f.kind === "dm" ? `/dm/${f.from}` : `/r/${f.unread}`);
  });
  on("unread-changed", updateTitle);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) unseenHere = 0;
    updateTitle();
  });
}
