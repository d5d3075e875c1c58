"""Kuafu's typed errors; each says what was wrong and what was expected."""

from __future__ import annotations


class KuafuError(Exception):
    """Base of every Kuafu error."""


class FrameError(KuafuError, ValueError):
    """Bytes that are not a valid Kuafu frame: the connection that sent them is closed."""


class TooLarge(FrameError):
    """A frame, header or message over its named limit."""


class Overloaded(KuafuError):
    """A flow-control window is full and the caller asked not to wait."""
