"""Django's PostgreSQL backend with a deadline on every answer (see ``base``)."""
