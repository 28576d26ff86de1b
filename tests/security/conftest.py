"""Fixtures for tests/security: the HTTP API and its tokens come from tests/api/conftest.py
(``keel_url`` serves the real app; ``api_token`` is a client token of tenant ``default``)."""

from tests.api.conftest import api_token, keel_url

__all__ = ["api_token", "keel_url"]
