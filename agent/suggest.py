""""Did you mean ...?" for misspelt names (settings, policy keys, commands, arguments)."""

from __future__ import annotations

from collections.abc import Iterable


def close_match(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, if one is close enough to be a typo."""
    import difflib  # only on an error path: difflib costs idle memory if imported at start

    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` to append to an error about ``name``, or ``""`` when no
    known name is close."""
    close = close_match(name, known)
    return f" (did you mean {close!r}?)" if close else ""
