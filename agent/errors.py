"""One exception tree for Igris, in the style of gpiozero's ``exc.py``.

Every error the agent raises on purpose derives from :class:`IgrisError`;
leaves also subclass the matching builtin so callers may catch either.
This module is portable (plain classes, no typing): the MicroPython lite
agent imports it through :mod:`agent.wire`.
"""


class IgrisError(Exception):
    """Base of every error Igris raises on purpose."""


# Leaves also subclass the matching builtin on CPython. MicroPython allows only one
# builtin base per class ("multiple bases have instance lay-out conflict") and has
# no FileNotFoundError, ConnectionError or Warning: there the leaves keep only their
# Igris parent, so portable code catches the Igris classes, never the builtins.
try:

    class _Probe(IgrisError, ValueError):
        pass

    _ValueError = ValueError
    _LookupError = LookupError
    _FileNotFoundError = FileNotFoundError
    _ConnectionError = ConnectionError
    _Warning = Warning
except TypeError:
    _ValueError = _LookupError = _FileNotFoundError = _ConnectionError = object
    _Warning = Exception


class ConfigError(IgrisError):
    """Base for configuration problems."""


class ConfigInvalid(ConfigError, _ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class WireError(IgrisError):
    """Base for problems with messages on the wire."""


class EnvelopeRejected(WireError, _ValueError):
    """An envelope was refused; ``reason`` is a short, countable code."""

    def __init__(self, reason, detail=""):
        self.reason = reason
        self.detail = detail
        msg = reason if not detail else reason + ": " + detail
        super().__init__(msg)


class TopicInvalid(WireError, _ValueError):
    """A topic or topic filter does not follow the Igris topic layout."""


class IdentityError(IgrisError):
    """Base for key, certificate and enrollment problems."""


class NotEnrolled(IdentityError, _FileNotFoundError):
    """The agent root holds no keys or certificate; run ``igris enroll``."""


class KeyFileInvalid(IdentityError, _ValueError):
    """A key file is unreadable, of the wrong size, or has unsafe permissions."""


class CertificateInvalid(IdentityError, _ValueError):
    """A certificate's signature, validity window or role does not check out."""


class CaError(IdentityError):
    """The fleet CA directory is missing, incomplete or already initialised."""


class TransportError(IgrisError):
    """Base for transport (MQTT or in-process) problems."""


class BrokerUnavailable(TransportError, _ConnectionError):
    """The MQTT broker cannot be reached or refused the connection."""


class StorageError(IgrisError):
    """Base for problems with the agent's SQLite database."""


class DatabaseCorrupt(StorageError):
    """The database file is not a usable SQLite database."""


class LedgerError(StorageError):
    """The ledger cannot be read or does not verify."""


class MemoryStoreError(StorageError):
    """Base for problems with the memory store: pools, documents and pool keys."""


class PoolNotFound(MemoryStoreError, _LookupError):
    """No memory pool of that name on this device."""


class DocumentNotFound(MemoryStoreError, _LookupError):
    """No live document under that key: never put, deleted, or expired."""


class DocumentInvalid(MemoryStoreError, _ValueError):
    """A document key or value cannot be stored (not JSON, too large, bad key)."""


class MemoryTampered(MemoryStoreError):
    """A stored document or pool key fails its check; never returned, only reported.

    ``pool`` and ``key`` name the document; ``key`` is None when the pool's
    keyring entry is the one that fails.
    """

    def __init__(self, pool, key, reason):
        self.pool = pool
        self.key = key
        self.reason = reason
        where = "pool " + repr(pool) + (" key " + repr(key) if key is not None else " keyring")
        super().__init__(where + " was tampered with: " + reason)


class PolicyRejected(IgrisError, _ValueError):
    """A policy document was refused (schema, signer role or version); says why."""


class CommandError(IgrisError):
    """Base for command bus problems."""


class _CodedCommandError(CommandError):
    """A ``code`` short and countable, and a ``detail`` that says why."""

    def __init__(self, code, detail=""):
        self.code = code
        self.detail = detail
        super().__init__(code if not detail else code + ": " + detail)


class CommandRefused(_CodedCommandError):
    """A command was not run; ``code`` is short and countable, the message says why."""


class CommandFailed(_CodedCommandError):
    """A command sent to one device came back refused or failed, or not at all.

    ``code`` is the reply's error code, or why there was no reply (``timeout``,
    ``dead``, ``left``, ``blocked``). Not a :class:`CommandRefused`: a handler
    raises that to refuse, and a failure it passes on must not read as one.
    """


class ProfileNotFound(ConfigError, _LookupError):
    """No target profile of that name ships with Igris."""


class ControlError(IgrisError):
    """Base for problems talking to a running agent over its control socket."""


class AgentNotRunning(ControlError, _ConnectionError):
    """No agent answers on the control socket."""


class IgrisWarning(_Warning):
    """Base of the warnings Igris gives when it falls back to something."""


class NoGpioWarning(IgrisWarning):
    """No GPIO pins here; the health LED is virtual (shown in ``igris status``)."""


class DevelopmentCaWarning(IgrisWarning):
    """Nothing was enrolled, so the agent made a local development CA."""


# Orchestrator


class OrchestratorError(IgrisError):
    """Base for task, plan, queue and planner problems."""


class TaskInvalid(OrchestratorError, _ValueError):
    """A task spec, state change or lease operation is refused; the message says why."""


class PlanInvalid(TaskInvalid):
    """A plan is refused; ``reasons`` lists every problem found, not just the first."""

    def __init__(self, reasons):
        self.reasons = list(reasons)
        super().__init__("plan refused: " + "; ".join(self.reasons))


class TaskNotFound(OrchestratorError, _LookupError):
    """No task with that id in the queue."""


class PlannerError(OrchestratorError):
    """A planner backend failed, or no template matches the goal."""


class TaskFailed(OrchestratorError):
    """A task ran and failed: a refused command, a missing input, a lost node, no node fits."""


class TaskTimedOut(TaskFailed):
    """A task outlived its ``timeout_s`` (raised by a handler that enforces it itself)."""
