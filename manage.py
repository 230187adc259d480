#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messaging_project.settings")
    from django.core.management import execute_from_command_line

    from messaging_project.config import BadConfiguration

    try:
        execute_from_command_line(sys.argv)
    except BadConfiguration as error:  # the environment is the operator's to fix: one line
        sys.exit(f"ImproperlyConfigured: {error}")


if __name__ == "__main__":
    main()
