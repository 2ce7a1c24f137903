"""The security tests reuse the end-to-end fleet: a real config repo and a local Target."""

from tests.e2e.conftest import fleet  # noqa: F401 - the fixture, for this folder's tests
