// chatd's room page, in small pieces, one per behaviour (style.md, "Front end in small
// pieces"). htmx does the talking over the socket; each piece below handles one thing and
// hears the others only through page.js's events. The order matters where pieces react to
// the same event: the composer drops a "sending…" copy before the list is arranged, and the
// list is arranged (days, groups) before the unread piece measures what is on screen, and a
// permalink's page scrolls to its message after the unread piece has placed the page.
import * as frames from "./frames.js";
import * as connection from "./connection.js";
import * as composer from "./composer.js";
import * as arrange from "./arrange.js";
import * as changes from "./changes.js";
import * as unread from "./unread.js";
import * as scrollback from "./scrollback.js";
import * as permalink from "./permalink.js";
import * as typing from "./typing.js";
import * as sidebar from "./sidebar.js";
import * as notifications from "./notifications.js";
import * as access from "./access.js";
import * as reactions from "./reactions.js";
import * as editor from "./editor.js";
import * as actions from "./actions.js";
import * as keyboard from "./keyboard.js";

for (const piece of [frames, connection, composer, arrange, changes, unread, scrollback, permalink, typing,
  sidebar, notifications, access, reactions, editor, actions, keyboard]) {
  piece.init();
}
