"""Pulsar's own Python Function API base classes, so code written against them keeps working.

Kept apart from `broker.py` on purpose: these are pure-Python abstract classes shipped with
pulsar-client, not the client itself.
"""

from __future__ import annotations

from pulsar import Context as PulsarContext
from pulsar import Function as PulsarFunction

__all__ = ["PulsarContext", "PulsarFunction"]
