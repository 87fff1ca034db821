"""The image bytes of a ``POST /predict``: a multipart field ``image`` or a raw ``image/*`` body.

Why read the stream by hand: a framework's form parsing stores the whole body before the handler runs, so an
oversized upload would be received in full before it is refused. Here the declared length is checked first and
the bytes are counted as they arrive; the request is refused (413) as soon as it passes the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

FIELD = "image"
HOW = f"send multipart/form-data with a file field {FIELD!r}, or the image itself with an image/* content type"


class Refusal(Exception):
    """A request the server will not take: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _too_large(limit: int) -> Refusal:
    return Refusal(413, f"upload is larger than the server's limit of {limit / 2**20:g} MB (--max-upload-mb)")


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, refused once more than ``limit`` bytes have arrived."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise _too_large(limit)
            yield chunk
    except ClientDisconnect:
        raise Refusal(400, "client disconnected before the upload was complete") from None


async def _read_all(request: Request, limit: int) -> bytes:
    parts = [chunk async for chunk in _limited(request, limit)]
    return b"".join(parts)


async def _from_form(request: Request, limit: int) -> tuple[bytes, str]:
    try:
        form = await MultiPartParser(request.headers, _limited(request, limit)).parse()
    except MultiPartException as exc:
        raise Refusal(400, f"malformed multipart body ({exc}); {HOW}") from None
    try:
        field = form.get(FIELD)
        if field is None:
            raise Refusal(422, f"multipart field {FIELD!r} is missing (got {sorted(form.keys()) or 'no fields'}); "
                               f"{HOW}")
        if not isinstance(field, UploadFile):
            raise Refusal(422, f"multipart field {FIELD!r} is text, not a file upload; {HOW}")
        return await field.read(), field.filename or FIELD
    finally:
        await form.close()


async def read_image_bytes(request: Request, limit: int) -> tuple[bytes, str]:
    """(the uploaded image's bytes, its file name for messages), or a ``Refusal`` (413 too large, 415 wrong content
    type, 422 no field)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return await _from_form(request, limit)
    if kind.startswith("image/"):
        return await _read_all(request, limit), "image"
    raise Refusal(415, f"unsupported content type {ctype or '(none)'!r}; {HOW}")
