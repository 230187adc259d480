"""The ingress scenario's baseline view, served at ``/bench/bare`` only when
``ENABLE_BENCHMARK_VIEWS`` is on (``messaging_project/urls.py``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery.api.views import MessageCreateApi


class BareMessageApi(APIView):
    """Validates a message body like ``MessageCreateApi`` (same authentication, parsers
    and renderers) and answers 202 without doing anything."""

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        serializer = MessageCreateApi.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({"state": "pending"}, status=status.HTTP_202_ACCEPTED)
