"""Helpers the tests share: real brokers and clients, agent processes, MicroPython."""
