"""volseg's version: one place, imported by every layer that records it."""

__version__ = "0.1.0"
