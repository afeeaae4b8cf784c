"""The REST API against its own OpenAPI schema (schemathesis), in-process through the ASGI app.

Every operation in ``/openapi.json`` gets generated requests, valid and invalid (about 30 per operation, each
bounded by a deadline). Every response must use a documented status code with a body that matches its schema,
and none may be a 5xx. The app runs with the real model and the shared YuNet detector; no network, no socket.

Schemathesis makes the uploads to ``/v1/predict`` from the schema (a string field, sent as a file), so they are
never images; a second test sends :func:`uploads` through the same schema checks: small JPEGs of the shared
photos, which must be answered 200, and truncated or corrupted ones, random bytes or an empty file, which must
get 200 or 422.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) tests the API schema")
pytest.importorskip("fastapi_offline", reason="the serve extra is not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis import Case  # noqa: E402

from agegender.serving.app import create_app  # noqa: E402
from agegender.serving.settings import ServeSettings  # noqa: E402

MAX_EXAMPLES = 30  # per operation
DEADLINE_MS = 5000  # per request; a photo costs well under 100 ms of CPU, this leaves room for a busy machine
PREDICT = "/v1/predict"
# The schema says "a file" (a string of application/octet-stream): it cannot say "a decodable image", so bytes
# that satisfy it may still be refused with the documented 422 ("not a usable image"). That is the contract,
# not a bug: for this one operation 422 counts as an answer to schema-valid data. Every other check stays on.
CONFIG = schemathesis.Config.from_str(f"""
[[operations]]
include-path = "{PREDICT}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422"]
""")

# The schema comes from the app without starting it (the model loads in its lifespan, on the first request).
# ``schemathesis.pytest.from_fixture`` would load it from a fixture instead, but fails on pytest 9 (it sets
# ``Node._nodeid``, which pytest 9 no longer has); the app is a fixture passed to each call instead.
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=CONFIG)


@pytest.fixture(scope="module")
def api_app(model_path: Path, yunet_path: Path) -> Iterator[Any]:
    """The app with the test model and the shared detector, started. Schemathesis runs its lifespan (the
    model loads once) in its own event loop thread, which every call reuses; started here, so that loading
    the model does not count against the first example's deadline, and stopped at the end."""
    from schemathesis.python import asgi

    app: Any = create_app(ServeSettings(model=str(model_path), detector=str(yunet_path)))
    try:
        with asgi.get_client(app) as client:
            assert client.get("/healthz").status_code == 200
        yield app
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def photos(photos_dir: Path) -> list[Image.Image]:
    images = []
    for path in sorted(photos_dir.glob("*.jpg")):
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def small_jpeg(image: Image.Image, scale: float, quality: int) -> bytes:
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(size).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def uploads(photos: list[Image.Image]) -> st.SearchStrategy[tuple[str, bytes]]:
    """("real", a small JPEG of a shared photo) or ("fuzzed", bytes that may not be an image)."""
    real = st.builds(small_jpeg, st.sampled_from(photos), st.floats(0.3, 1.0), st.integers(20, 95))

    def truncated(data: bytes, fraction: float) -> bytes:
        return data[:int(len(data) * fraction)]

    def corrupted(data: bytes, changes: list[tuple[float, int]]) -> bytes:
        out = bytearray(data)
        for where, value in changes:
            out[int(where * (len(out) - 1))] = value
        return bytes(out)

    fuzzed = st.one_of(
        st.builds(truncated, real, st.floats(0.0, 0.99)),
        st.builds(corrupted, real, st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1,
                                             max_size=64)),
        st.binary(max_size=4096),
        st.just(b""),
    )
    return st.booleans().flatmap(lambda is_real: real.map(lambda data: ("real", data)) if is_real
                                 else fuzzed.map(lambda data: ("fuzzed", data)))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_api_matches_its_schema(case: Case, api_app: Any) -> None:
    """Schemathesis' own requests to every operation, positive and negative."""
    case.call_and_validate(app=api_app)


@given(data=st.data())
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_predict_answers_real_and_fuzzed_uploads_by_its_schema(data: st.DataObject, api_app: Any,
                                                               photos: list[Image.Image]) -> None:
    """Uploads schemathesis cannot make: real photos (200 with their faces) and broken ones (200 or 422)."""
    kind, image = data.draw(uploads(photos), label="upload")
    case = data.draw(schema[PREDICT]["POST"].as_strategy(body={"image": image}), label="case")
    response = case.call_and_validate(app=api_app)
    if kind == "real":
        assert response.status_code == 200, response.text
        assert response.json()["image"]["width"] > 0
    else:
        assert response.status_code in (200, 422), response.text
