// The connection: a badge in the sidebar, a banner over the conversation while it is down
// (visible on a phone with the drawer closed), one announcement per change, and the
// catch-up on reconnect (the server replays what this tab missed after the newest message or
// change it saw: new messages, and edits, reactions and deletions of older ones).
import { $, announce, body, emit, lastSeen, on } from "./page.js";

const badge = $("conn-state");
const banner = $("conn-banner");
let state = "connecting";
let everOnline = false;
let bannerTimer = 0;
let gone = false;  // the server closed this socket because the room went

function set(next, text, sentence = "") {
  if (next === state && badge.textContent === text) return;
  const was = state;
  state = next;
  badge.dataset.state = next;
  badge.textContent = text;
  body.classList.toggle("offline", next !== "online");
  clearTimeout(bannerTimer);
  if (next === "online") {
    banner.hidden = true;
    if (everOnline && was !== "online") announce("Connected again.");
    everOnline = true;
  } else {
    // A blip shorter than a second (a reconnect) shows nothing.
    const say = sentence || "Connection lost. Reconnecting…";
    bannerTimer = setTimeout(() => { banner.textContent = say; banner.hidden = false; }, next === "offline" ? 0 : 1000);
    if (was === "online") announce(say);
  }
  emit("connection", { state: next });
}

export function init() {
  document.addEventListener("htmx:ws:before:connection", (e) => {
    const connection = e.detail.connection;
    const url = new URL(connection.url);
    url.searchParams.set("since", String(lastSeen()));
    connection.url = url.toString();
    set("connecting", everOnline ? "reconnecting…" : "connecting…");
  });
  document.addEventListener("htmx:ws:after:connection", () => set("online", "live"));
  document.addEventListener("htmx:ws:close", (e) => {
    if (e.detail.code === 1008 && gone) set("offline", "no access", "You no longer have access to this room.");
    else if (e.detail.code === 1008) set("offline", "signed out", "You were signed out. Sign in again to keep chatting.");
    else set("connecting", "reconnecting…");
  });
  on("frame", (f) => {
    if (f.room_removed && f.here) gone = true;
    if (f.reload) location.reload();
  });
}
