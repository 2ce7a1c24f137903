"""verifyTls / caBundle against the fake served over HTTPS with a throwaway self-signed cert."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.providers import load_provider
from reconciler.providers.coolify import CoolifyConfigError, CoolifyUnavailable
from tests.helpers import need

from .conftest import ALL_ABILITIES, TOKEN_ENV, service_resource, target_resource
from .contract import OpenAPIContract
from .fake_coolify import FakeCoolify

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("tls")
    openssl = shutil.which("openssl")
    need(openssl is not None, "openssl is needed to make a test certificate")
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
async def tls_fake(
    contract: OpenAPIContract, certificate: tuple[Path, Path], monkeypatch
) -> AsyncIterator[FakeCoolify]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = FakeCoolify(contract)
    await server.start(tls=context)
    monkeypatch.setenv(TOKEN_ENV, server.add_token(ALL_ABILITIES))
    try:
        yield server
    finally:
        await server.stop()
    assert server.violations == []


async def test_untrusted_certificate_is_refused(tls_fake: FakeCoolify, ctx) -> None:
    app = tls_fake.add_app("api")
    provider = load_provider(target_resource(tls_fake.url, retry={"attempts": 1}), ctx)
    try:
        with pytest.raises(CoolifyUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()


async def test_ca_bundle_trusts_a_private_ca(tls_fake: FakeCoolify, certificate, ctx) -> None:
    app = tls_fake.add_app("api")
    provider = load_provider(target_resource(tls_fake.url, caBundle=str(certificate[0])), ctx)
    try:
        [instance] = await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert instance.id == app.uuid


async def test_verify_tls_off(tls_fake: FakeCoolify, ctx) -> None:
    app = tls_fake.add_app("api")
    provider = load_provider(target_resource(tls_fake.url, verifyTls=False), ctx)
    try:
        [instance] = await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert instance.id == app.uuid


async def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path, ctx, monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "1|unused")
    provider = load_provider(
        target_resource("https://127.0.0.1:9", caBundle=str(tmp_path / "missing.pem")), ctx
    )
    try:
        with pytest.raises(CoolifyConfigError, match=r"missing\.pem"):
            await provider.instances(service_resource(uuid="x"))
    finally:
        await provider.close()
