"""Pi throttling flags: decoding the firmware's word, and running vcgencmd safely."""

import asyncio
import sys
import time

import pytest

from agent.device import ThrottleFlags, read_throttled
from agent.device.throttle import parse_get_throttled


def fake_vcgencmd(script):
    """A stand-in vcgencmd: the real interface (argv in, text out), any behaviour."""
    return (sys.executable, "-c", script)


def test_common_weak_supply_word_decodes_now_and_since_boot():
    # 0x50005: under-voltage and throttled now, and both have occurred since boot.
    flags = ThrottleFlags.from_word(0x50005)
    assert flags.under_voltage and flags.throttled
    assert not flags.freq_capped and not flags.soft_temp_limit
    assert flags.under_voltage_occurred and flags.throttled_occurred
    assert not flags.freq_capped_occurred and not flags.soft_temp_limit_occurred
    assert flags.active() == ("under_voltage", "throttled")


def test_history_only_word_has_nothing_active():
    flags = ThrottleFlags.from_word(0xF0000)
    assert flags.active() == ()
    assert flags.under_voltage_occurred and flags.freq_capped_occurred
    assert flags.throttled_occurred and flags.soft_temp_limit_occurred


def test_each_now_bit_maps_to_its_own_flag():
    names = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")
    for bit, name in enumerate(names):
        assert ThrottleFlags.from_word(1 << bit).active() == (name,)


def test_to_dict_shows_the_raw_word_in_hex():
    as_dict = ThrottleFlags.from_word(0x50005).to_dict()
    assert as_dict["raw"] == "0x50005"
    assert as_dict["under_voltage"] is True and as_dict["freq_capped"] is False


@pytest.mark.parametrize(
    ("output", "word"),
    [("throttled=0x50005\n", 0x50005), ("throttled=0x0\n", 0), ("throttled=7", 7)],
)
def test_parse_reads_the_word(output, word):
    assert parse_get_throttled(output) == word


def test_parse_rejects_other_answers():
    assert parse_get_throttled("VCHI initialization failed\n") is None


def test_read_runs_the_command_and_decodes_its_answer():
    flags = asyncio.run(read_throttled(fake_vcgencmd("print('throttled=0x50005')")))
    assert flags == ThrottleFlags.from_word(0x50005)


def test_absent_command_is_none():
    assert asyncio.run(read_throttled(("igris-no-such-vcgencmd", "get_throttled"))) is None


def test_failing_command_is_none():
    script = "import sys; print('VCHI initialization failed', file=sys.stderr); sys.exit(255)"
    assert asyncio.run(read_throttled(fake_vcgencmd(script))) is None


def test_hanging_command_times_out_to_none():
    started = time.monotonic()
    result = asyncio.run(
        read_throttled(fake_vcgencmd("import time; time.sleep(30)"), timeout_s=0.3)
    )
    assert result is None
    assert time.monotonic() - started < 5
