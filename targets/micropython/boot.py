"""Runs first at every power-up: join Wi-Fi (when config.json names a network).

Kept apart from main.py so a broken main.py still leaves a board that is on
the network and reachable with ``mpremote``.
"""

import json
import time

import network


def join_wifi(timeout_ms=15000):
    with open("config.json") as f:
        wifi = json.load(f).get("wifi") or {}
    if not wifi.get("ssid"):
        return
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi.get("password", ""))
        start = time.ticks_ms()
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            time.sleep_ms(100)


join_wifi()
