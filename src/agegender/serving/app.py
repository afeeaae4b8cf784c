"""The HTTP API and web page: ``create_app(settings)`` builds the FastAPI application, ``serve`` runs it.

Every error is JSON ``{"detail": "..."}``, with a 4xx status for anything the client can fix: 400 (a
multipart/form-data body the parser cannot read), 413 (upload too large), 422 (not a usable image, no complete
file in the field: none sent, or the body cut before its closing boundary; a bad parameter); 503 (too many
requests waiting) and 504 (timeout) say when to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agegender.images import ImageError
from agegender.inference.results import FACE_SCHEMA
from agegender.serving.batching import QueueFullError
from agegender.serving.service import InferenceService
from agegender.serving.settings import MIB, ServeSettings
from agegender.version import __version__

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes allowed on top of ``max_upload_bytes`` for the multipart envelope (boundaries, part headers)."""
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")
"""Content-Security-Policy of the web page: it loads nothing from outside this server."""


_FACE_FIELDS: dict[str, Any] = {name: (kind, Field(description=text)) for name, (kind, text) in FACE_SCHEMA.items()}
FaceOut = create_model("FaceOut", __doc__="One face, as ``Face.to_dict()`` writes it.", __module__=__name__,
                       **_FACE_FIELDS)
"""One face in a response: generated from ``FACE_SCHEMA``, the keys, types and meanings of ``Face.to_dict()``."""


class ImageSize(BaseModel):
    width: int
    height: int


class PredictOut(BaseModel):  # ImageResult.to_dict() with the size under "image", and the timing
    faces: list[FaceOut] = Field(description="most confident detection first")  # type: ignore[valid-type]
    image: ImageSize = Field(description="size after applying the EXIF orientation; boxes refer to it")
    model: str
    timing_ms: dict[str, float] = Field(description="decode, queue, inference and total milliseconds")


class ErrorOut(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in {
        400: "a multipart/form-data body the parser cannot read (bad or missing boundary, malformed part header)",
        413: "upload larger than the server's limit",
        422: "not a usable image (empty, unknown format, truncated, too many pixels), no complete file in 'image' "
             "(none sent, or the body cut before its closing boundary), or a bad parameter",
        503: "too many requests waiting; retry after the Retry-After seconds",
        504: "no answer within the server's time limit",
    }.items()}

router = APIRouter()


def _service(request: Request) -> InferenceService:
    return request.app.state.service


def _settings(request: Request) -> ServeSettings:
    return request.app.state.settings


@router.post("/v1/predict", response_model=PredictOut, responses=ERRORS,
             summary="Age and gender of every face")
async def predict(
    request: Request,
    image: Annotated[UploadFile, File(description="the photo: JPEG, PNG, GIF, BMP, WEBP, TIFF or PPM")],
    flip: Annotated[bool | None, Query(description="average each face with its mirror image "
                                                   "(default: the server's setting)")] = None,
) -> JSONResponse:
    """Detect the faces in an uploaded photo (multipart field ``image``) and estimate age and gender.

    The ``X-Batch-Size`` response header says how many concurrent uploads shared the forward pass."""
    settings = _settings(request)
    photos = len((await request.form()).getlist("image"))  # parsed already, for ``image``
    if photos > 1:
        raise HTTPException(422, f"one photo per request: the field 'image' came {photos} times")
    data = await image.read()
    if len(data) > settings.max_upload_bytes:  # the body limit allows for the multipart envelope
        raise HTTPException(413, too_large(settings.max_upload_bytes))
    try:
        async with asyncio.timeout(settings.timeout_s):
            prediction = await _service(request).predict(data, flip)
    except ImageError as err:
        raise HTTPException(422, str(err)) from err
    except QueueFullError as err:
        raise HTTPException(503, f"server busy ({err}); retry in a moment",
                            headers={"Retry-After": "1"}) from err
    except TimeoutError as err:
        raise HTTPException(504, f"no answer within the server's {settings.timeout_s:g} s limit; "
                                 "retry later, or send a smaller image") from err
    found = prediction.result.to_dict()
    body = {"faces": found["faces"], "image": {"width": found["width"], "height": found["height"]},
            "model": found["model"], "timing_ms": prediction.timing_ms}
    return JSONResponse(body, headers={"X-Batch-Size": str(prediction.batch_size)})


@router.head("/healthz", include_in_schema=False)  # monitoring probes
@router.get("/healthz", summary="Liveness: the model is loaded and the server answers")
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok", "model": _service(request).model_name, "pending": _service(request).pending}


@router.get("/v1/models", summary="The model served: metadata, metrics and the server's limits")
async def models(request: Request) -> dict[str, Any]:
    settings = _settings(request)
    limits = {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
              "timeout_s": settings.timeout_s, "detect_size": settings.detect_size}
    return {"models": [_service(request).describe()], "limits": limits}


@router.head("/", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


def too_large(max_upload_bytes: int) -> str:
    """The 413 answer's detail."""
    return f"upload too large: the limit is {max_upload_bytes / MIB:g} MiB"


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_bytes``: from Content-Length before reading anything, and by
    counting bytes as they arrive (chunked uploads have no Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int, detail: str) -> None:
        self.app, self.max_bytes, self.detail = app, max_bytes, detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.detail)  # FastAPI passes HTTPExceptions from body parsing on
            return message

        await self.app(scope, counting_receive, send)


def _validation_detail(request: Request, err: RequestValidationError) -> str:
    """One readable sentence for FastAPI's list of validation errors."""
    messages = []
    for error in err.errors():
        kind, *path = error.get("loc", ("request",))
        where = ".".join(str(part) for part in path)
        if where == "image" and error.get("type") == "missing":
            content_type = request.headers.get("content-type", "none")
            messages.append("no complete file in multipart field 'image' (none sent, or the body ended before its "
                            "closing boundary): send the photo as multipart/form-data, e.g. curl -F "
                            f"image=@photo.jpg (the request's content type was {content_type})")
        elif where == "image":
            messages.append("field 'image' must be a file upload, not a text value")
        else:
            messages.append(f"{kind} parameter '{where}': {error.get('msg', 'invalid')}")
    return "; ".join(messages)


async def _on_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _validation_detail(request, err)}, status_code=422)


async def _on_unexpected_error(request: Request, err: Exception) -> JSONResponse:
    """JSON for the 500 that a bug causes; Starlette re-raises the exception so that uvicorn logs it."""
    return JSONResponse({"detail": f"internal error ({type(err).__name__}); see the server log"},
                        status_code=500)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The application; the model and the detector load when it starts (once per process)."""
    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with InferenceService(settings) as service:
            app.state.service = service
            yield

    # FastAPI with /docs and /redoc whose scripts come from this server, not a CDN: they work offline
    app = FastAPIOffline(title="agegender", version=__version__, lifespan=lifespan,
                         description="Age and gender for every face in a photo. POST a photo to `/v1/predict`; "
                                     "the web page at `/` does it for you.")
    app.state.settings = settings
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]  # Starlette's stub takes Exception
    app.add_exception_handler(Exception, _on_unexpected_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_ALLOWANCE,
                       detail=too_large(settings.max_upload_bytes))
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes: settings from ``ServeSettings.from_env()``."""
    return create_app(ServeSettings.from_env())


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server in the foreground with ``settings.workers`` processes."""
    import uvicorn

    settings.to_env()
    uvicorn.run("agegender.serving.app:create_app_from_env", factory=True, host=host, port=port,
                workers=settings.workers, timeout_graceful_shutdown=5)
