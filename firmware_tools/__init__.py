"""Firmware tools (``igris-fw``): signed OTA bundles, A/B slots, first-boot preparation of boot
images, and the MicroPython lite agent's bundle."""

from firmware_tools.bundle import build_bundle, verify_bundle
from firmware_tools.errors import BootDirInvalid, BundleRejected, FirmwareError
from firmware_tools.firstboot import DevicePaths
from firmware_tools.image import MqttTls, PreparedImage, prepare_image
from firmware_tools.manifest import BundleFile, Manifest
from firmware_tools.version import parse_version

__all__ = [
    "BootDirInvalid", "BundleFile", "BundleRejected", "DevicePaths", "FirmwareError", "Manifest",
    "MqttTls", "PreparedImage", "build_bundle", "parse_version", "prepare_image", "verify_bundle",
]
