"""App configuration."""

from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    """The delivery app; declares its Dramatiq actors on the project's broker when ready."""

    name = "delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from delivery import actors  # noqa: F401
