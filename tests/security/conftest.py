"""The security tests reuse the end-to-end fleet (a real config repo and a local Target) and,
for the packaged unit, the deployment tests' wheels of this working tree."""

from tests.deploy.conftest import wheels  # noqa: F401 - the fixture, for this folder's tests
from tests.e2e.conftest import fleet  # noqa: F401 - the fixture, for this folder's tests
