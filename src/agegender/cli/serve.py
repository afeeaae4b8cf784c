"""``agegender serve``: the REST API (``POST /v1/predict``) and the web page at ``/``."""

from __future__ import annotations

import argparse

from agegender.cli.common import (
    UserError,
    add_accurate_options,
    add_backend_options,
    add_detect_size_option,
    add_max_pixels_option,
    add_model_options,
    check_model_options,
    finite_number,
    port_number,
    positive_int,
    require_extra,
)
from agegender.serving.settings import MIB, ServeSettings

#: The defaults of every option below: the settings' own, stated once in ``ServeSettings``.
_DEFAULTS = ServeSettings()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the REST API and the web page", description=(
        "Serve POST /v1/predict (multipart field 'image'), GET /v1/models, GET /healthz and a web page at /. "
        "API docs at /docs."))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; "
                                                       "0.0.0.0 for every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="default %(default)s")
    add_model_options(p)
    p.add_argument("--detector", help="YuNet ONNX file (default: $AGEGENDER_YUNET, the cache, or a download)")
    add_detect_size_option(p)
    add_accurate_options(p)
    add_backend_options(p)
    p.add_argument("--workers", type=int, default=_DEFAULTS.workers,
                   help="server processes, each with its own model (default %(default)d)")
    p.add_argument("--threads", type=positive_int, help="inference and decoding threads per process "
                                               "(default: one per CPU, at most 4)")
    p.add_argument("--max-upload-mb", type=finite_number("MiB", above_zero=True),
                   default=_DEFAULTS.max_upload_bytes / MIB,
                   help="largest upload in MiB, larger ones get 413 (default %(default)g)")
    add_max_pixels_option(p)
    p.add_argument("--timeout", type=finite_number("seconds", above_zero=True), default=_DEFAULTS.timeout_s,
                   help="seconds per request before 504 (default %(default)g)")
    p.add_argument("--batch-max", type=int, default=_DEFAULTS.batch_max,
                   help="most images per forward pass; 1 turns micro-batching off (default %(default)d)")
    p.add_argument("--batch-wait-ms", type=finite_number("milliseconds"), default=_DEFAULTS.batch_wait_ms,
                   help="how long a batch waits for more requests (default %(default)g)")
    p.add_argument("--no-flip", action="store_true",
                   help="do not average faces with their mirror image unless a request asks with ?flip=true "
                        "(faster)")
    p.add_argument("--max-queue", type=int, default=_DEFAULTS.max_queue,
                   help="requests waiting for the model beyond this many get 503 (default %(default)d)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_extra("serve", "fastapi", "fastapi_offline", "uvicorn", "multipart")
    check_model_options(args)
    from agegender.inference.detector import WeightsError
    from agegender.inference.onnx_model import ModelError
    from agegender.serving.app import serve
    from agegender.serving.service import InferenceService

    settings = ServeSettings(
        model=args.model, gender_model=args.gender_model, detector=args.detector, detect_size=args.detect_size,
        max_upload_bytes=round(args.max_upload_mb * MIB), max_pixels=args.max_pixels, timeout_s=args.timeout,
        workers=args.workers, threads=args.threads,
        batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
        flip=not args.no_flip, accurate=args.accurate, descriptor_weights=args.descriptor_weights,
        backend=args.backend, device=args.device)
    try:  # fail here with one clear line, not in every worker; also fetches YuNet once for all workers
        InferenceService(settings)
    except (ModelError, WeightsError, ValueError) as err:
        raise UserError(str(err)) from err
    serve(settings, host=args.host, port=args.port)
    return 0
