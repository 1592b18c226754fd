// The sidebar: unread badges, entries that come and go live in their sorted place (the
// server sends each entry's HTML and sort key), the unread total on the ☰ button, the
// drawer on narrow screens (a modal: focus stays inside, Escape closes it, nothing in it
// is focusable while closed), and Alt+↑/Alt+↓ to the room above or below.
import { $, body, emit, on, roomSlug } from "./page.js";

const sidebar = $("sidebar");
const menu = $("menu");
const total = $("unread-total");
const main = $("live");
const scrim = $("scrim");
const narrow = matchMedia("(max-width: 760px)");
const left = new Set((body.dataset.left || "").split(" ").filter(Boolean));
const badgeOf = (slug) => document.querySelector(`.sidebar [data-unread="${CSS.escape(slug)}"]`);

export function unreadTotal() {
  let n = 0;
  for (const b of sidebar.querySelectorAll(".badge[data-unread]")) n += Number(b.textContent) || 0;
  return n;
}

function showTotal() {
  const n = unreadTotal();
  total.textContent = n > 0 ? String(n) : "";
  menu.setAttribute("aria-label", n > 0 ? `Conversations, ${n} unread` : "Conversations");
  emit("unread-changed");
}

function setUnread(slug, count) {
  if (slug === roomSlug) return;
  const badge = badgeOf(slug);
  if (!badge) return;
  badge.textContent = count > 0 ? String(count) : "";
  badge.closest("a")?.classList.toggle("has-unread", count > 0);
  showTotal();
}

/** Put the server's entry into its list in sorted place (replacing an older copy). */
function place(list, sort, html) {
  const ul = $(list === "dms" ? "dm-list" : "room-list");
  const holder = document.createElement("template");
  holder.innerHTML = html.trim();
  const li = holder.content.firstElementChild;
  if (!li) return null;
  const slug = li.querySelector("[data-unread]")?.dataset.unread;
  const old = slug && badgeOf(slug)?.closest("li");
  const count = old ? old.querySelector("[data-unread]").textContent : "";
  if (old && old.querySelector("[aria-current]")) return old;  // the room on screen stays as it is
  old?.remove();
  const after = [...ul.children].find((c) => c.dataset.sort !== undefined && c.dataset.sort > sort);
  ul.insertBefore(li, after || null);
  if (count) li.querySelector("[data-unread]").textContent = count;
  return li;
}

function removeEntry(slug, here) {
  if (slug === roomSlug && !here) return;  // left in another tab: this one still shows it
  badgeOf(slug)?.closest("li")?.remove();
  showTotal();
}

function frame(f) {
  if (f.unread && f.unread !== roomSlug) {
    if (!badgeOf(f.unread) && !left.has(f.unread) && f.html) place(f.list, f.sort, f.html);
    const badge = badgeOf(f.unread);
    if (badge) setUnread(f.unread, (Number(badge.textContent) || 0) + 1);
  }
  for (const counts of [f.unread_set, f.unread_all]) {
    if (counts) for (const [slug, n] of Object.entries(counts)) setUnread(slug, n);
  }
  if (f.room_updated && f.html) {
    left.delete(f.room_updated);
    place(f.list, f.sort, f.html);
    setUnread(f.room_updated, Number(f.unread) || 0);
  }
  if (f.room_removed) {
    if (f.left) left.add(f.room_removed);  // its next message does not bring it back
    removeEntry(f.room_removed, f.here);
  }
}

// -- the drawer ---------------------------------------------------------------------------
const isOpen = () => sidebar.classList.contains("open");
function openDrawer() {
  sidebar.classList.add("open");
  sidebar.inert = false;
  sidebar.setAttribute("role", "dialog");
  sidebar.setAttribute("aria-modal", "true");
  menu.setAttribute("aria-expanded", "true");
  main.inert = true;
  scrim.hidden = false;
  (sidebar.querySelector("[aria-current=page]") || sidebar.querySelector("a"))?.focus();
}
function closeDrawer(focusMenu = true) {
  if (!isOpen()) return;
  sidebar.classList.remove("open");
  sidebar.setAttribute("role", "complementary");
  sidebar.removeAttribute("aria-modal");
  menu.setAttribute("aria-expanded", "false");
  main.inert = false;
  scrim.hidden = true;
  if (focusMenu) menu.focus();
}
function syncWidth() {
  // Wide screens always show the sidebar; narrow ones keep it out of reach while closed.
  if (!narrow.matches) closeDrawer(false);
  sidebar.inert = narrow.matches && !isOpen();
}

/** Tab and Shift+Tab go round the open drawer. */
function trapTab(e) {
  const stops = [...sidebar.querySelectorAll("a[href], button:not([disabled]), input, [tabindex='0']")]
    .filter((el) => el.offsetParent !== null);
  if (!stops.length) return;
  const [first, last] = [stops[0], stops[stops.length - 1]];
  if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
  else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
  else if (!sidebar.contains(document.activeElement)) { e.preventDefault(); first.focus(); }
}

// -- moving between rooms --------------------------------------------------------------------
function step(by) {
  const links = [...sidebar.querySelectorAll(".rooms a")];
  const here = links.findIndex((a) => a.getAttribute("aria-current") === "page");
  const next = links[here + by];
  if (next) location.href = next.href;
}

export function init() {
  showTotal();
  on("frame", frame);
  menu.addEventListener("click", (e) => {
    e.preventDefault();
    isOpen() ? closeDrawer() : openDrawer();
    syncWidth();
  });
  menu.addEventListener("keydown", (e) => { if (e.key === " ") { e.preventDefault(); menu.click(); } });
  document.querySelector(".skip")?.addEventListener("click", () => { closeDrawer(false); syncWidth(); });
  $("close-drawer").addEventListener("click", (e) => { e.preventDefault(); closeDrawer(); syncWidth(); });
  scrim.addEventListener("click", () => { closeDrawer(); syncWidth(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && isOpen()) { e.preventDefault(); closeDrawer(); syncWidth(); }
    if (e.key === "Tab" && isOpen()) trapTab(e);
    if (e.altKey && !e.ctrlKey && !e.metaKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      step(e.key === "ArrowUp" ? -1 : 1);
    }
  });
  narrow.addEventListener("change", syncWidth);
  syncWidth();
}
