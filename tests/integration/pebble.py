"""Pebble (Debian's ACME test server) and pebble-challtestsrv, real peers for certbot, on the stack's gateway.

Pebble validates HTTP-01 by connecting to port 80 of the address its DNS (challtestsrv) gives for the name:
the edge host's private address. Everything binds the stack network's gateway or 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import free_port, wait_for_port

from llmcloud.local import system
from tests.packages import ACME


def _listener_cert(directory: Path, address: str) -> Path:
    """A small CA and a server certificate for Pebble's own HTTPS listener; returns the CA file."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmcloud test ACME listener CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(address))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory / "ca.pem"


@contextmanager
def pebble(workdir: Path, gateway: str, names: dict[str, str]):
    """Run Pebble and challtestsrv; `names` maps DNS names to addresses. Yields what clients need."""
    system.ensure_packages(ACME)
    listener_ca = _listener_cert(workdir, gateway)
    dns_port = free_port(gateway, socket.SOCK_DGRAM)
    mgmt = free_port("127.0.0.1")
    acme, pebble_mgmt = free_port(gateway), free_port("127.0.0.1")
    procs = [
        subprocess.Popen(
            [
                "pebble-challtestsrv",
                "-dns01",
                f"{gateway}:{dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                # Only the A records set below: no default AAAA (::1) that Pebble would try first.
                "-defaultIPv6",
                "",
                "-defaultIPv4",
                "",
                "-management",
                f"127.0.0.1:{mgmt}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        wait_for_port("127.0.0.1", mgmt)
        for name, address in names.items():
            body = json.dumps({"host": name, "addresses": [address]}).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{mgmt}/add-a", body), timeout=10)
        config = workdir / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{gateway}:{acme}",
                        "managementListenAddress": f"127.0.0.1:{pebble_mgmt}",
                        "certificate": str(workdir / "cert.pem"),
                        "privateKey": str(workdir / "key.pem"),
                        "httpPort": 80,
                        "tlsPort": 443,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        procs.append(
            subprocess.Popen(
                ["pebble", "-config", str(config), "-dnsserver", f"{gateway}:{dns_port}"],
                env=env,
                stdout=open(workdir / "pebble.log", "w"),  # noqa: SIM115 (lives as long as the process)
                stderr=subprocess.STDOUT,
            )
        )
        wait_for_port(gateway, acme)
        context = ssl.create_default_context(cafile=str(listener_ca))
        context.check_hostname = (
            False  # the management API is on 127.0.0.1; the certificate names the gateway
        )
        root = urllib.request.urlopen(f"https://127.0.0.1:{pebble_mgmt}/roots/0", context=context, timeout=10)
        (workdir / "issuer-root.pem").write_bytes(root.read())
        yield {
            "directory": f"https://{gateway}:{acme}/dir",
            "listener_ca": listener_ca.read_text(),
            "issuer_root": workdir / "issuer-root.pem",
            "log": workdir / "pebble.log",
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
