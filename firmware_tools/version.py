"""Release versions as ``X.Y.Z`` integer tuples, compared without a third-party library.

A device refuses a bundle older than what it runs (rollback protection), so
the comparison must be exact and must not depend on ``packaging`` being
installed on a board. Only the release segment of PEP 440 is accepted:
pre-releases and local versions are refused rather than guessed at.
"""

from __future__ import annotations

import re

from agent.errors import ConfigInvalid

Version = tuple[int, int, int]

_RELEASE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")


def parse_version(text: str, what: str = "version") -> Version:
    """``"1.2.10"`` -> ``(1, 2, 10)``; anything else is :class:`ConfigInvalid` naming it."""
    match = _RELEASE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigInvalid(
            f"{what} {text!r} is not a release version; write it as X.Y.Z with plain "
            "numbers, e.g. '1.4.0'"
        )
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch
