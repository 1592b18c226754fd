"""Typed keys for the application's shared state, declared in one place."""

from __future__ import annotations

from aiohttp import web

from chatd.config import Config
from chatd.hub import Hub
from chatd.render import HtmlRenderer
from chatd.services import Services
from chatd.store import Store

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
SERVICES = web.AppKey("services", Services)
SETUP_TOKEN = web.AppKey("setup_token", list)  # [token or None], filled at startup
RENDERER = web.AppKey("renderer", HtmlRenderer)
