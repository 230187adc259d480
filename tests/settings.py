"""Settings for the test suite: the project's settings on real PostgreSQL and Redis.

Uses ``DATABASE_URL`` and ``REDIS_URL`` when set, else the local services at their usual
ports; where neither answers and Docker runs, starts them with testcontainers; where
none of that works, stops with a message saying what to start (never a silent skip).
"""

from __future__ import annotations

import os

from tests.services import resolve_services

os.environ.update(resolve_services())
os.environ.setdefault("LOG_JSON", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# DEBUG is off, as in production, so a real key is required; the tests' own (the project's
# subprocesses inherit it).
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-never-used-by-any-deployment-0123456789")

from messaging_project.settings import *  # noqa: F403

# Passwords are hashed on every test user; the fast hasher keeps the suite quick.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The in-process suite sends one user's load far past any per-user rate: no throttles here.
# The project's defaults (throttles on) are tested against a real server, in
# tests/acceptance/test_hardening.py.
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}  # noqa: F405
