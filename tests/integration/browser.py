"""A real browser for what people see: Debian's Chromium, headless, driven with Selenium (chromedriver).

The edge's certificate is trusted by its key only (Chromium's SPKI allow-list), so TLS is still checked for
exactly the stack's certificate and nothing else is waived. Screenshots go to the test artifacts directory
(``LLMCLOUD_ARTIFACTS``, default ``.cache/artifacts``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from llmcloud import REPO_ROOT
from llmcloud.local import system
from tests.packages import BROWSER


def artifacts() -> Path:
    path = Path(os.environ.get("LLMCLOUD_ARTIFACTS", REPO_ROOT / ".cache" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def spki_pin(host: str, port: int) -> str:
    """base64 SHA-256 of the served certificate's public key, as Chromium's allow-list wants it."""
    pem = ssl.get_server_certificate((host, port))
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def chromium(pin: str):
    """A headless Chromium that trusts the certificate with this key pin, and keeps its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    system.ensure_packages(BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--ignore-certificate-errors-spki-list={pin}",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def console(driver) -> list[dict]:
    """Every entry of the page's console since the browser started. Chromium hands each entry out once
    (get_log), so they are kept on the driver: waiting for a page must not hide a CSP violation from a later
    check."""
    kept = getattr(driver, "llmcloud_console", None)
    if kept is None:
        kept = driver.llmcloud_console = []
    kept.extend(driver.get_log("browser"))
    return kept


def wait_for(driver, seconds: float, condition, what: str):
    """WebDriverWait(driver, seconds).until(condition); past the time, an AssertionError that says what was
    awaited and what the browser showed instead (address, title, the page's text, its console's errors): a
    bare TimeoutException tells a CI log nothing.

    Chromium fails a page's requests in flight with net::ERR_NETWORK_CHANGED when a network interface comes or
    goes on this machine (the containers of the suites running beside this one), and a single-page app such
    as Open WebUI then waits forever ("Signing in"): the page is loaded again then, as a person would, at most
    twice."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    deadline = time.monotonic() + seconds
    seen = len(console(driver))  # what the console said before this wait is not this wait's business
    reloads = 0
    while True:
        try:
            return WebDriverWait(driver, max(0.5, min(5.0, deadline - time.monotonic()))).until(condition)
        except TimeoutException:
            pass
        try:
            entries = console(driver)
        except WebDriverException:
            entries = []
        changed = any("ERR_NETWORK_CHANGED" in e["message"] for e in entries[seen:])
        seen = len(entries)
        if changed and reloads < 2:
            reloads += 1
            driver.refresh()
            continue
        if time.monotonic() < deadline:
            continue
        try:
            text = " ".join(driver.find_element(By.TAG_NAME, "body").text.split())[:600]
            errors = [e["message"][:200] for e in console(driver) if e["level"] == "SEVERE"][-5:]
            shown = f"{driver.current_url} ({driver.title!r}): {text!r}; console errors: {errors}"
        except WebDriverException as e:
            shown = f"nothing readable ({e.msg})"
        raise AssertionError(f"{what}: not within {seconds:.0f}s; the browser showed {shown}") from None


def sign_in_at_the_mock_provider(driver, user: str, timeout: float = 60) -> None:
    """On oidc-provider-mock's authorization form: type the user and submit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready

    field = wait_for(
        driver, timeout, ready.presence_of_element_located((By.NAME, "sub")), "the identity provider's form"
    )
    field.clear()
    field.send_keys(user)
    field.submit()


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in console(driver) if "Content Security Policy" in e["message"]]


def serve_page(html: str):
    """Another origin on the same site as the local stack: https://localhost:<port>/ serving `html`, with a
    certificate of its own. Returns (url, its key pin for chromium(), the server: shutdown() when done)."""
    import datetime
    import http.server
    import tempfile
    import threading

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    page = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        pem = Path(folder) / "page.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(der).digest()).decode()
    return f"https://localhost:{server.server_address[1]}/", pin, server
