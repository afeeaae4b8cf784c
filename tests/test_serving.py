"""The REST service over real HTTP (``agegender serve`` in a subprocess), its batcher, and bad input."""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import running_server

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is needed to talk to the server")
pytest.importorskip("fastapi_offline", reason="the serve extra is not installed")

from agegender.cli import main  # noqa: E402
from agegender.inference.detector import DETECT_SIZE, DETECTOR_RUNTIMES  # noqa: E402
from agegender.serving.batching import MicroBatcher, QueueFullError  # noqa: E402
from agegender.serving.settings import MIB, ServeSettings  # noqa: E402

PHOTO = "smahesh29_man1.jpg"  # 612x408, one face
GROUP_PHOTO = "dlib_2007_007763.jpg"  # 500x375, about eight faces
REPO = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> Image.Image:
    with Image.open(photos_dir / PHOTO) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60) as http:
        yield http


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    return encode(image, "JPEG")


def upload(data: bytes, filename: str = "photo", content_type: str = "application/octet-stream"
           ) -> dict[str, Any]:
    """httpx keyword arguments for a multipart upload in field ``image``."""
    return {"files": {"image": (filename, data, content_type)}}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes = b"", bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG file built by hand, so that its header may claim anything."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def zeros_png(width: int, height: int) -> bytes:
    """A complete, valid black grayscale PNG: tiny on disk, ``width * height`` bytes once decoded."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return png(width, height, idat)


def exif_rotated(photo: Image.Image) -> bytes:
    """The photo stored turned a quarter left, with EXIF orientation 6 telling viewers to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)


def animated_gif(photo: Image.Image) -> bytes:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16(photo: Image.Image, gray: bool) -> bytes:
    """A 16-bit PNG of the photo (grayscale or RGB), full 16-bit range."""
    pixels = np.asarray(photo.convert("L")) if gray else cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", pixels.astype(np.uint16) * 257)[1].tobytes()


def gif_claiming(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen size says ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


def corrupted_jpeg(photo: Image.Image) -> bytes:
    data = bytearray(encode(photo, "JPEG"))
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 3, len(data) - 10, 200):
        data[i] = int(rng.integers(0, 256))
    return bytes(data)


def ico(photo: Image.Image) -> bytes:
    return encode(photo.resize((64, 64)), "ICO")


# --- the bad-input corpus --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One request: how to build it from the sample photo, the acceptable statuses, and the faces expected
    on success ("some", "none", or None for no check)."""

    build: Callable[[Image.Image], dict[str, Any]]
    statuses: frozenset[int]
    faces: str | None = None


def ok(build: Callable[[Image.Image], dict[str, Any]], faces: str | None) -> Case:
    return Case(build, frozenset({200}), faces)


def rejected(build: Callable[[Image.Image], dict[str, Any]], *statuses: int) -> Case:
    return Case(build, frozenset(statuses or (422,)))


CORPUS: dict[str, Case] = {
    # not an image at all
    "empty file": rejected(lambda p: upload(b"")),
    "plain text": rejected(lambda p: upload(b"hello, this is not a photo\n" * 20, "notes.txt", "text/plain")),
    "html": rejected(lambda p: upload(b"<!doctype html><html><body><img src=x></body></html>", "a.html")),
    "svg": rejected(lambda p: upload(b'<svg xmlns="http://www.w3.org/2000/svg" width="9"/>', "a.svg")),
    "pdf header": rejected(lambda p: upload(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")),
    "postscript": rejected(lambda p: upload(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")),
    "zip archive": rejected(lambda p: upload(zip_file(), "photos.zip", "application/zip")),
    "random bytes": rejected(lambda p: upload(np.random.default_rng(1).bytes(10_000))),
    "ico (unsupported format)": rejected(lambda p: upload(ico(p), "a.ico")),
    # broken images
    "truncated jpeg": rejected(lambda p: upload(jpeg(p)[:4000], "cut.jpg", "image/jpeg")),
    "ppm with a broken header": rejected(lambda p: upload(b"P6", "cut.ppm")),
    "ppm with a garbage token": rejected(lambda p: upload(b"P5\n32 " + bytes(range(128, 255)), "bad.pgm")),
    "jpeg header only": rejected(lambda p: upload(jpeg(p)[:200], "head.jpg", "image/jpeg")),
    "truncated png": rejected(lambda p: upload(encode(p, "PNG")[:5000], "cut.png", "image/png")),
    "png with bad crc": rejected(lambda p: upload(encode(p, "PNG")[:29] + bytes(4) + encode(p, "PNG")[33:])),
    "corrupted jpeg data": Case(lambda p: upload(corrupted_jpeg(p), "noisy.jpg"), frozenset({200, 422})),
    # sizes
    "0x0 png": rejected(lambda p: upload(png(0, 0), "zero.png", "image/png")),
    "1x1 png": ok(lambda p: upload(encode(Image.new("RGB", (1, 1)), "PNG"), "dot.png"), "none"),
    "1x1 jpeg": ok(lambda p: upload(jpeg(Image.new("RGB", (1, 1), "white")), "dot.jpg"), "none"),
    "16x16": ok(lambda p: upload(encode(p.resize((16, 16)), "PNG")), "none"),
    "1x5000 strip": ok(lambda p: upload(encode(Image.new("L", (1, 5000), 128), "PNG")), "none"),
    "png header claiming 20000x20000": rejected(lambda p: upload(png(20000, 20000, zlib.compress(b"")))),
    "png header claiming 10000x10000": rejected(lambda p: upload(png(10000, 10000, zlib.compress(b"")))),
    "gif claiming 65535x65535": rejected(lambda p: upload(gif_claiming(65535, 65535), "bomb.gif")),
    "huge dimensions 7200x7200 (real png)": rejected(lambda p: upload(zeros_png(7200, 7200), "big.png")),
    # unusual but valid images: answered with their faces
    "cmyk jpeg": ok(lambda p: upload(jpeg(p.convert("CMYK")), "cmyk.jpg", "image/jpeg"), "some"),
    "16-bit grayscale png": ok(lambda p: upload(png16(p, gray=True), "gray16.png"), "some"),
    "16-bit rgb png": ok(lambda p: upload(png16(p, gray=False), "rgb16.png"), "some"),
    "animated gif": ok(lambda p: upload(animated_gif(p), "anim.gif", "image/gif"), "some"),
    "exif-rotated jpeg": ok(lambda p: upload(exif_rotated(p), "rotated.jpg", "image/jpeg"), "some"),
    "grayscale jpeg": ok(lambda p: upload(jpeg(p.convert("L")), "gray.jpg"), "some"),
    "rgba png": ok(lambda p: upload(encode(p.convert("RGBA"), "PNG"), "rgba.png"), "some"),
    "palette png, transparent": ok(lambda p: upload(encode(p.convert("P"), "PNG", transparency=0)), "some"),
    "bmp": ok(lambda p: upload(encode(p, "BMP"), "photo.bmp", "image/bmp"), "some"),
    "webp": ok(lambda p: upload(encode(p, "WEBP"), "photo.webp", "image/webp"), "some"),
    "tiff": ok(lambda p: upload(encode(p, "TIFF"), "photo.tif", "image/tiff"), "some"),
    "ppm": ok(lambda p: upload(encode(p, "PPM"), "photo.ppm"), "some"),
    "jpeg with trailing garbage": ok(lambda p: upload(jpeg(p) + b"\xde\xad" * 500), "some"),
    "no face (gradient)": ok(lambda p: upload(jpeg(Image.linear_gradient("L").resize((640, 480)))), "none"),
    # the request itself
    "jpeg sent as text/plain part": ok(lambda p: upload(jpeg(p), "photo.txt", "text/plain"), "some"),
    "unicode file name": ok(lambda p: upload(jpeg(p), "фото 写真 \U0001f600.jpg", "image/jpeg"), "some"),
    "no body": rejected(lambda p: {}),
    "json body": rejected(lambda p: {"json": {"image": "photo.jpg"}}),
    "raw jpeg body": rejected(lambda p: {"content": jpeg(p), "headers": {"content-type": "image/jpeg"}}),
    "form field instead of file": rejected(lambda p: {"data": {"image": "photo.jpg"}}),
    "wrong field name": rejected(lambda p: {"files": {"file": ("photo.jpg", jpeg(p), "image/jpeg")}}),
    "multipart without boundary": rejected(
        lambda p: {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, 422),
    "malformed multipart": rejected(
        lambda p: {"content": b"junk" * 99, "headers": {"content-type": "multipart/form-data; boundary=x"}},
        400, 422),
    "bad flip value": rejected(lambda p: {**upload(jpeg(p)), "params": {"flip": "maybe"}}),
    "two photos in one request": rejected(lambda p: {"files": [("image", ("a.jpg", jpeg(p), "image/jpeg")),
                                                               ("image", ("b.jpg", jpeg(p), "image/jpeg"))]}),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus(client: httpx.Client, photo: Image.Image, name: str) -> None:
    case = CORPUS[name]
    response = client.post("/v1/predict", **case.build(photo))
    body = response.json()
    assert response.status_code in case.statuses, body
    if response.status_code != 200:
        assert isinstance(body["detail"], str) and len(body["detail"]) > 10, body
        return
    if case.faces == "some":
        assert body["faces"], body
    elif case.faces == "none":
        assert body["faces"] == [], body


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30


def test_server_still_healthy_after_bad_input(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# --- the API ---------------------------------------------------------------------------------------------

def test_predict_finds_the_faces_of_a_group_photo(client: httpx.Client, photos_dir: Path) -> None:
    data = (photos_dir / GROUP_PHOTO).read_bytes()
    response = client.post("/v1/predict", **upload(data, GROUP_PHOTO, "image/jpeg"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 500, "height": 375}
    assert body["model"] == "flagship"
    assert 5 <= len(body["faces"]) <= 10
    face = body["faces"][0]
    assert set(face) == {"box", "score", "age", "age_range", "age_group", "age_group_confidence", "gender",
                         "gender_confidence", "landmarks"}
    assert face["gender"] in ("female", "male") and len(face["box"]) == 4 and len(face["landmarks"]) == 5
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
    scores = [f["score"] for f in body["faces"]]
    assert scores == sorted(scores, reverse=True)


def test_flip_can_be_switched_off_per_request(client: httpx.Client, photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    with_flip = client.post("/v1/predict", **upload(data), params={"flip": "true"}).json()
    without = client.post("/v1/predict", **upload(data), params={"flip": "false"}).json()
    assert with_flip["faces"][0]["box"] == without["faces"][0]["box"]
    assert with_flip["faces"][0] != without["faces"][0]  # the mirror image changes the estimates


def test_exif_orientation_is_applied(client: httpx.Client, photo: Image.Image) -> None:
    body = client.post("/v1/predict", **upload(exif_rotated(photo))).json()
    assert body["image"] == {"width": photo.width, "height": photo.height}
    assert len(body["faces"]) == 1


def test_healthz_and_models(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model": "flagship", "pending": 0}
    assert client.head("/healthz").status_code == client.head("/").status_code == 200  # monitoring probes
    info = client.get("/v1/models").json()
    model = info["models"][0]
    assert model["name"] == "flagship" and model["config"]["input_size"] > 0
    assert {"metrics", "version", "file", "detector"} <= set(model)
    assert model["detector_runtime"] in DETECTOR_RUNTIMES and model["detector_runtime"] != "auto"
    assert "path" not in model  # no server file-system paths
    assert info["limits"]["max_upload_bytes"] == 10 * MIB and info["limits"]["detect_size"] == DETECT_SIZE


def test_page_static_files_and_docs(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert "://" not in response.text + page.text  # nothing is fetched from another site
    assert client.get("/static/../app.py").status_code == 404
    for docs in ("/docs", "/redoc"):  # their scripts and styles come from this server: they work offline
        html = client.get(docs)
        assert html.status_code == 200 and "://" not in html.text, docs
        assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html.text)
        assert any(a.endswith(".js") for a in assets), (docs, assets)  # the page's script is among them
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_unknown_route_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_oversize_upload_with_content_length_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/predict", **upload(bytes(11 * MIB), "big.jpg"))
    assert response.status_code == 413
    assert "10 MiB" in response.json()["detail"]


def test_oversize_chunked_upload_is_413_while_reading(client: httpx.Client) -> None:
    boundary = "agegenderboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode()
        for _ in range(44):
            yield bytes(256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/v1/predict", content=body(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text
    assert client.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def patient_server(server_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose batcher waits a whole second for companions: requests of one burst, prepared by the
    decoding pool one after another, meet in a batch however slow the machine is."""
    log = tmp_path_factory.mktemp("patient") / "server.log"
    with running_server([*server_args, "--batch-wait-ms", "1000"], log) as url:
        yield url


def test_concurrent_requests_are_batched(patient_server: str, photos_dir: Path) -> None:
    data = (photos_dir / GROUP_PHOTO).read_bytes()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=patient_server, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/predict", **upload(data)) for _ in range(12)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 12
    assert len({json.dumps(r.json()["faces"]) for r in responses}) == 1  # batching changes no result
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1


@pytest.fixture(scope="module")
def strict_server(server_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two worker processes, a 1 MiB upload limit and a timeout no prediction can meet."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    with running_server([*server_args, "--workers", "2", "--timeout", "0.001", "--max-upload-mb", "1"],
                        log) as url:
        yield url


def test_timeout_upload_limit_and_workers_settings(strict_server: str, photo: Image.Image) -> None:
    with httpx.Client(base_url=strict_server, timeout=60) as http:
        response = http.post("/v1/predict", **upload(encode(photo, "JPEG")))
        assert response.status_code == 504 and "0.001 s" in response.json()["detail"]
        response = http.post("/v1/predict", **upload(bytes(2 * MIB)))
        assert response.status_code == 413 and "1 MiB" in response.json()["detail"]
        # over the limit by less than the multipart envelope's allowance: still the file's own size decides
        response = http.post("/v1/predict", **upload(bytes(MIB + 1000)))
        assert response.status_code == 413 and "1 MiB" in response.json()["detail"]
        assert http.get("/v1/models").json()["limits"]["max_upload_bytes"] == MIB
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(("command", "message"), [
    (["serve", "--port", "99999"], "--port: must be 0 to 65535, got 99999"),
    (["serve", "--threads", "0"], "--threads: must be >= 1"),
    (["predict", "clip.mp4", "--every", "0"], "--every: must be >= 1"),
    (["predict", "clip.mp4", "--max-frames", "-1"], "--max-frames: must be >= 1"),
])
def test_cli_refuses_bad_numbers_before_loading_anything(command: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "agegender.cli", *command], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_a_missing_model_in_one_line(tmp_path: Path, yunet_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "serve", "--model", str(missing),
                             "--detector", str(yunet_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"model file not found: {missing}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_load_test_quick(server_url: str) -> None:
    """The load test's short form: 10 clients, 40 requests, no error."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "measure" / "load_test.py"), "--url", server_url,
                             "--clients", "10", "--requests", "40", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0 and summary["ok"] == 40


# --- settings and the batcher, without a server ------------------------------------------------------------

def test_settings_validate_and_travel_through_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    for timeout in (0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout_s must be a positive number"):
            ServeSettings(timeout_s=timeout)
    with pytest.raises(ValueError, match="batch_wait_ms must be a number"):
        ServeSettings(batch_wait_ms=float("nan"))
    with pytest.raises(ValueError, match="max_upload_bytes must be at least 1"):
        ServeSettings(max_upload_bytes=0)
    for option, value in (("--max-upload-mb", "nan"), ("--timeout", "inf"), ("--batch-wait-ms", "-1")):
        with pytest.raises(SystemExit) as stop:  # named with its option ("cannot convert float NaN to integer")
            main(["serve", option, value])
        assert stop.value.code == 2 and f"argument {option}: must be a number of" in capsys.readouterr().err
    settings = ServeSettings(model="m.onnx", workers=3, batch_wait_ms=0.5, flip=False)
    monkeypatch.delenv("AGEGENDER_SERVE_SETTINGS", raising=False)
    assert ServeSettings.from_env() == ServeSettings()
    settings.to_env()
    assert ServeSettings.from_env() == settings


def run_batcher(fn: Callable[[list[int]], list[int]], items: list[int], **options: Any) -> list[Any]:
    """Submit ``items`` concurrently to a MicroBatcher around ``fn``; results or exceptions in order."""
    async def main() -> list[Any]:
        settings = {"max_batch": 8, "max_wait_s": 0.01, "max_queue": 100, **options}
        async with MicroBatcher(fn, **settings) as batcher:
            return await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)

    return asyncio.run(main())


def test_batcher_groups_concurrent_items_up_to_max_batch() -> None:
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(items)
        return [2 * i for i in items]

    outcomes = run_batcher(double, list(range(20)))
    assert [result for result, _ in outcomes] == [2 * i for i in range(20)]
    assert [len(c) for c in calls] == [8, 8, 4]
    assert [stats.batch_size for _, stats in outcomes] == [8] * 16 + [4] * 4


def test_batcher_failure_of_one_item_fails_only_that_request() -> None:
    def picky(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("three is bad")
        return items

    outcomes = run_batcher(picky, list(range(6)))
    assert isinstance(outcomes[3], ValueError)
    assert [o[0] for i, o in enumerate(outcomes) if i != 3] == [0, 1, 2, 4, 5]


def test_batcher_refuses_beyond_its_queue_limit() -> None:
    outcomes = run_batcher(lambda items: items, list(range(5)), max_queue=3)
    assert sum(isinstance(o, QueueFullError) for o in outcomes) == 2
