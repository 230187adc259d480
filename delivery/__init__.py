"""The delivery domain: models, services, selectors, actors, API, admin and commands."""
