"""The unit tier: pure Python, no Redis, no database, no Django settings.

These tests run with the rest of the suite, and on their own without any service:
``python -m pytest -p no:django tests/unit`` (``make unit``). pytest-django is switched
off there because it loads the test settings, which look for PostgreSQL and Redis.
"""
