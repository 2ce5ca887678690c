"""Igris: an embedded-first edge agent for fleets of Raspberry Pi and Jetson boards."""

__version__ = "0.1.0"
