"""The admin side: metrics and health on a port of their own (never the public one)."""
from __future__ import annotations

from tickcast.admin.endpoints import AdminServer

__all__ = ["AdminServer"]
