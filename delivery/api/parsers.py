"""The API's JSON parser: DRF's, made safe with hostile bodies."""

from __future__ import annotations

from typing import IO, Any

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; JSON nested deeper than Python's decoder can recurse is a 400,
    like any malformed JSON, not a ``RecursionError`` (a 500).

    (A body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` never gets here: DRF reads JSON bodies
    through Django, which refuses it; ``delivery.api.errors`` answers that 413.)
    """

    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None
