"""chatd: a self-hosted real-time chat server in one Python process."""

__version__ = "0.1.0"
