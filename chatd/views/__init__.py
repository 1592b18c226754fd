"""Browser pages, partials and the HTMX socket. Server-rendered; htmx makes it live.

pages.py: sign-in, the room page, its socket and the rest; rooms.py: the rooms page,
joining and leaving rooms, and administrators' archive and delete.
"""

from __future__ import annotations

from chatd.views import pages, rooms

routes = [*pages.routes, *rooms.routes]
