"""A Kafka broker behind TLS, and a recorder of what clients put on the wire, for the Kafka
security tests (tests/test_kafka_security.py).

Tansu 0.6.0 serves no TLS of its own (`--cert` and `--key` refuse each other, and with `--cert`
alone the listener stays plain: a TLS client's handshake times out), so Debian's stunnel4
terminates TLS in front of it: clients connect to stunnel's port, which is also the listener
Tansu advertises in its metadata, so every connection a client makes goes through TLS.

SASL: `tansu broker --authentication` runs the SASL handshake (SCRAM-SHA-256/512), but its
storage engines in this build (memory://, s3://) keep no users (`upsert_user_scram_credential`
does nothing, the lookup answers none), so no login can succeed on it. It can refuse one for
real, though, and a recording relay between stunnel and Tansu reads the SASL exchange the
client sends once TLS is off: the handshake's mechanism and the SCRAM client-first message
with the user name.

Certificates come from trustme: a test CA, the broker's certificate for 127.0.0.1 signed by
it, and a second CA that did not sign it (the wrong KAFKA_SSL_CAFILE).
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from simapp.embedded.broker import tansu_binary
from simapp.embedded.processes import ManagedProcess, free_port, spawn, wait_for_port

HOST = "127.0.0.1"


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass
class Certificates:
    ca: Path  # the CA that signed the broker's certificate
    wrong_ca: Path  # a CA that did not
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca, other = trustme.CA(), trustme.CA()
        server = ca.issue_cert(HOST, "localhost")
        files = cls(
            ca=directory / "ca.pem",
            wrong_ca=directory / "wrong-ca.pem",
            cert=directory / "broker.pem",
            key=directory / "broker.key",
        )
        ca.cert_pem.write_to_path(str(files.ca))
        other.cert_pem.write_to_path(str(files.wrong_ca))
        server.private_key_pem.write_to_path(str(files.key))
        with open(files.cert, "wb") as out:
            for pem in server.cert_chain_pems:
                out.write(pem.bytes())
        return files


@dataclass
class Frame:
    """One request a client sent: its API key and version, and the whole frame's bytes."""

    api_key: int
    api_version: int
    data: bytes


@dataclass
class Recorder:
    """A TCP relay to `target` that keeps every byte clients send (in a thread of its own)."""

    target: int
    port: int = 0
    sent: bytearray = field(default_factory=bytearray)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Recorder:
        ready = threading.Event()
        self.port = free_port(HOST)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._relay, HOST, self.port))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if keep:
                        self.sent.extend(chunk)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def frames(self) -> list[Frame]:
        """The requests in what clients sent (connections one after another: aiokafka sends
        nothing on a connection before the previous request's answer during the handshake)."""
        data, frames, at = bytes(self.sent), [], 0
        while at + 8 <= len(data):
            (size,) = struct.unpack_from(">i", data, at)
            api_key, api_version = struct.unpack_from(">hh", data, at + 4)
            frames.append(Frame(api_key, api_version, data[at + 4 : at + 4 + size]))
            at += 4 + size
        return frames

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class TlsBroker:
    """Tansu on a plain loopback port behind stunnel's TLS port (the advertised listener)."""

    workdir: Path
    certs: Certificates
    authentication: bool = False  # Tansu's --authentication: every SASL login is refused
    record: bool = False  # a Recorder between stunnel and Tansu
    tansu: ManagedProcess | None = None
    stunnel: ManagedProcess | None = None
    recorder: Recorder | None = None
    port: int = 0

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> TlsBroker:
        stunnel = stunnel_binary()
        assert stunnel, "stunnel4 is missing (make tools installs it)"
        logs = self.workdir / "logs"
        self.port = free_port(HOST)
        plain = free_port(HOST)
        args = [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{HOST}:{plain}",
            "--advertised-listener-url",
            f"tcp://{HOST}:{self.port}",  # clients come back through TLS
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.authentication:
            args.append("--authentication")
        name = "tansu-auth" if self.authentication else "tansu-tls"
        self.tansu = spawn(name, args, log_dir=logs, env={"RUST_LOG": "warn"})
        wait_for_port(HOST, plain, timeout=30, proc=self.tansu.proc)
        target = plain
        if self.record:
            self.recorder = Recorder(plain).start()
            target = self.recorder.port
        conf = self.workdir / f"stunnel-{self.port}.conf"
        conf.write_text(
            "foreground = yes\n"
            "pid =\n"
            "debug = notice\n"
            "[kafka]\n"
            f"accept = {HOST}:{self.port}\n"
            f"connect = {HOST}:{target}\n"
            f"cert = {self.certs.cert}\n"
            f"key = {self.certs.key}\n"
        )
        self.stunnel = spawn(f"stunnel-{self.port}", [stunnel, str(conf)], log_dir=logs)
        wait_for_port(HOST, self.port, timeout=30, proc=self.stunnel.proc)
        return self

    def stop(self) -> None:
        for part in (self.stunnel, self.tansu):
            if part is not None:
                part.stop(timeout=5)
        if self.recorder is not None:
            self.recorder.stop()
