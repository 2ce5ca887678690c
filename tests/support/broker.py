"""A real Mosquitto for tests, on a free loopback port, configured from a temp dir.

Tests talk to the same broker the fleet uses, so what they check (retained
messages, wills, persistent sessions, TLS with client certificates) is what
Mosquitto really does, not what a fake believes it does::

    with MosquittoBroker(tmp_path / "broker") as broker:
        url = broker.url          # mqtt://127.0.0.1:PORT
        broker.kill()             # SIGKILL: clients see the connection drop
        broker.restart()          # same port; persisted sessions come back
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.transport import MqttSettings

_INSTALL_HINT = "install it with: apt-get install mosquitto mosquitto-clients"


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` broker binary (Debian puts it in /usr/sbin)."""
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError(f"mosquitto not found in /usr/sbin or on PATH; {_INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TestPki:
    """A throw-away CA with one server and one client certificate (PEM files)."""

    __test__ = False  # not a test class, despite the name

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_pki(directory: Path, client_cn: str = "pi-01") -> TestPki:
    """Create a CA, a server certificate for 127.0.0.1/localhost and a client one.

    Uses the ``openssl`` command (P-256 keys: fast to make, small for a Pi).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not found; install it with: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=igris-test-ca", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, extra in (
        ("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                "extendedKeyUsage=serverAuth\n"),
        ("client", client_cn, "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extra
        )
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return TestPki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem", server_key=directory / "server.key",
        client_cert=directory / "client.pem", client_key=directory / "client.key",
    )


class MosquittoBroker:
    """``mosquitto`` on ``127.0.0.1:<free port>``; start with ``with`` or :meth:`start`.

    Persistence is on (autosaved on every change, in ``directory``), so a
    :meth:`kill` and :meth:`restart` keep the persistent sessions and
    retained messages the broker had saved, as a real broker's disk would.
    That save costs about a millisecond per queued QoS 1 message: pass
    ``persist=False`` to measure latency or throughput.
    With ``tls`` the listener wants TLS and a client certificate from that CA.
    """

    host = "127.0.0.1"

    def __init__(self, directory: Path, *, tls: TestPki | None = None, persist: bool = True,
                 extra_config: str = ""):
        self.directory = Path(directory)
        self.tls = tls
        self.persist = persist
        self.extra_config = extra_config
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "mosquitto.log"
        self._exe = find_mosquitto()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client_settings(self, client_id: str, *, url: str | None = None,
                        **kw: Any) -> MqttSettings:
        """Settings for a client of this broker: its URL and, with TLS, the client
        certificate; a short backoff so reconnect tests take tenths of a second."""
        if self.tls is not None:
            kw.setdefault("ca_file", str(self.tls.ca))
            kw.setdefault("cert_file", str(self.tls.client_cert))
            kw.setdefault("key_file", str(self.tls.client_key))
        kw.setdefault("backoff_base_s", 0.05)
        kw.setdefault("backoff_cap_s", 0.5)
        return MqttSettings.from_url(url or self.url, client_id=client_id, **kw)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 5.0) -> None:
        """Start on a new free port (or the old one after :meth:`kill`); wait until it listens."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        fresh = self.port == 0
        for _ in range(3 if fresh else 1):
            if fresh:
                self.port = free_port(self.host)
            try:
                self._launch(timeout)
                return
            except _PortTaken:
                continue
        raise RuntimeError(f"mosquitto could not listen on {self.host}:{self.port}:\n"
                           f"{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: no will processing on the broker side, no final save."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self, timeout: float = 5.0) -> None:
        """Kill if running, then start again on the same port."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        """SIGTERM (the broker saves its state), SIGKILL if it takes over 5 s."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_text(self) -> str:
        """What mosquitto logged so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _config(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Started as root, mosquitto would switch to the mosquitto user and
            # could not write its database into our temp dir.
            "user root",
            "set_tcp_nodelay true",
            "max_queued_messages 10000",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.persist:
            lines += [
                "persistence true",
                f"persistence_location {self.directory / 'data'}/",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        return "\n".join(lines) + "\n" + self.extra_config

    def _launch(self, timeout: float) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self._config())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self._exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                text = self.log_text()
                if "Address already in use" in text[-500:]:
                    raise _PortTaken
                raise RuntimeError(f"mosquitto exited at start:\n{text}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mosquitto did not listen on {self.host}:{self.port} within "
                        f"{timeout}s:\n{self.log_text()}") from None
                time.sleep(0.01)  # startup takes a few ms; there is nothing to wait on


class _PortTaken(Exception):
    pass


class BrokerProxy:
    """A TCP front for a real broker, to play the brokers and links Mosquitto cannot.

    - ``refuse_v5=True``: a 3.1.1-only broker. Each CONNECT is read; protocol
      level 5 gets the 3.1.1 answer "unacceptable protocol version" (CONNACK
      return code 1) and is closed. ``refused`` counts those attempts.
    - :meth:`freeze`: a link that went silent (no FIN, no RST, as when a
      Wi-Fi access point vanishes). Bytes are dropped both ways and no close
      is passed on, so only the client's own keepalive can notice.
      :meth:`thaw` lets bytes flow again for connections made from then on.

    ``connects`` counts the CONNECT packets it has read (whatever it did next).
    """

    def __init__(self, upstream_port: int, *, refuse_v5: bool = False,
                 host: str = "127.0.0.1"):
        self.host = host
        self.upstream_port = upstream_port
        self.refuse_v5 = refuse_v5
        self.port = 0
        self.refused = 0
        self.connects = 0
        self.frozen = False
        self._connect_seen = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def wait_connects(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` CONNECT packets have arrived in all."""
        async def wait() -> None:
            while self.connects < count:
                self._connect_seen.clear()
                await self._connect_seen.wait()
        await asyncio.wait_for(wait(), timeout)

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def close(self) -> None:
        """Close every connection and wait until its tasks are done."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            first = await reader.readexactly(1)
            length_bytes, length, shift = b"", 0, 0
            while True:
                byte = await reader.readexactly(1)
                length_bytes += byte
                length |= (byte[0] & 0x7F) << shift
                shift += 7
                if not byte[0] & 0x80:
                    break
            body = await reader.readexactly(length)
            self.connects += 1
            self._connect_seen.set()
            protocol_level = body[6]  # after the length-prefixed name "MQTT"
            if self.refuse_v5 and protocol_level >= 5:
                self.refused += 1
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            self._writers.add(up_writer)
            up_writer.write(first + length_bytes + body)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        if self.frozen:
            await self._closing.wait()  # a silent link: never pass the close on
        writer.close()
