"""The web page in a real browser: Debian's Chromium, driven by Playwright, uploads photos; the tests check
what the page draws and lists. Never downloads a browser: skips when /usr/bin/chromium (apt-get install
chromium) or the playwright package is missing."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLORS = {"female": (0xE6, 0x3C, 0x78), "male": (0x28, 0x96, 0xEB)}  # as in static/app.js
SCREENSHOT = Path("/tmp/agegender_page.png")
GROUP_PHOTO = "dlib_2007_007763.jpg"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM}: apt-get install -y chromium")
    reason = "the playwright package (dev extra) is missing"
    sync_api = pytest.importorskip("playwright.sync_api", reason=reason)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, server_url: str) -> Iterator[Any]:
    """The page at /, failing the test on any script error or any request to another site."""
    with open_page(browser, server_url) as opened:
        yield opened


def _model_line_shown(page: Any) -> None:
    """The page at / is ready: its model line came from /v1/models."""
    page.locator("#model", has_text=re.compile(r"^model ")).wait_for()


@contextmanager
def open_page(browser: Any, server_url: str, path: str = "/",
              ready: Callable[[Any], None] = _model_line_shown) -> Iterator[Any]:
    """:func:`page` for the server at ``server_url``: the page at ``path``, once ``ready`` has waited for it."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(90_000)  # the CPU may be shared with a training job
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
            and problems.append(f"console error: {msg.text}"))  # 4xx answers are logged; they are tested
    page.on("request", lambda req: req.url.startswith(server_url) or req.url.startswith("data:")
            or problems.append(f"request to another site: {req.url}"))
    page.goto(f"{server_url}{path}")
    # Locator waits run in Playwright's isolated world; wait_for_function would need eval, which the page's
    # Content-Security-Policy rightly forbids.
    ready(page)
    yield page
    page.close()
    assert not problems


def js_round(value: float) -> int:
    """JavaScript's Math.round (halves go up), unlike Python's round."""
    return math.floor(value + 0.5)


def expected_label(face: dict[str, Any], index: int) -> str:
    return f"{index + 1} · {'F' if face['gender'] == 'female' else 'M'} {js_round(face['age'])}"


def upload_and_wait(page: Any, action: Any) -> dict[str, Any]:
    """Run ``action`` (which makes the page upload a photo); the JSON the server answered."""
    with page.expect_response("**/v1/predict**") as response_info:
        action()
    page.wait_for_selector("#canvas[data-labels]", state="attached")
    return response_info.value.json()


def check_drawing_and_table(page: Any, body: dict[str, Any]) -> None:
    faces = body["faces"]
    labels = json.loads(page.get_attribute("#canvas", "data-labels"))
    assert labels == [expected_label(face, i) for i, face in enumerate(faces)]
    rows = page.locator("#faces tbody tr")
    assert rows.count() == len(faces)
    for i, face in enumerate(faces):
        cells = rows.nth(i).locator("td").all_inner_texts()
        number, gender, age = cells[:3]
        assert (number, age) == (str(i + 1), f"{face['age']:.1f}") and gender.startswith(face["gender"])
    # The box of the first face is stroked in its gender's colour: sample across the middle of its left edge (the
    # stroke straddles a box edge that may fall between pixels, so the pixel nearest the colour is taken).
    x, y, w, h = faces[0]["box"]
    pixels = page.evaluate("""([x, y, width]) => {
        const canvas = document.querySelector('#canvas');
        const scale = canvas.width / width;
        const context = canvas.getContext('2d');
        const data = context.getImageData(Math.round(x * scale) - 1, Math.round(y * scale), 3, 1).data;
        return [0, 1, 2].map(i => Array.from(data.slice(4 * i, 4 * i + 3)));
    }""", [x, y + h / 2, body["image"]["width"]])
    colour = COLORS[faces[0]["gender"]]
    assert any(all(abs(a - b) <= 40 for a, b in zip(pixel, colour, strict=True)) for pixel in pixels), pixels


def test_choosing_a_photo_draws_boxes_labels_and_a_table(page: Any, photos_dir: Path) -> None:
    body = upload_and_wait(page, lambda: page.set_input_files("#file", str(photos_dir / GROUP_PHOTO)))
    assert len(body["faces"]) >= 5
    check_drawing_and_table(page, body)
    assert f"{len(body['faces'])} faces in {GROUP_PHOTO}" in page.inner_text("#status")
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_dropping_a_photo_works_too(page: Any, photos_dir: Path) -> None:
    data = base64.b64encode((photos_dir / "smahesh29_man1.jpg").read_bytes()).decode()
    drop = """(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.jpg', { type: 'image/jpeg' }));
        document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, cancelable: true }));
    }"""
    body = upload_and_wait(page, lambda: page.evaluate(drop, data))
    assert len(body["faces"]) == 1
    check_drawing_and_table(page, body)


def test_a_file_that_is_not_an_image_shows_the_servers_reason(page: Any) -> None:
    with page.expect_response("**/v1/predict**") as response_info:
        page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just text"})
    assert response_info.value.status == 422
    status = page.locator("#status.error")
    status.wait_for()
    assert "notes.txt: image data: not a recognised image" in status.inner_text()


def test_an_answer_for_an_earlier_photo_does_not_replace_a_later_ones(page: Any, photos_dir: Path) -> None:
    """The first photo's answer is held back (a large photo takes longer on the server): once it replaced the second
    photo's result, which had arrived first."""
    page.evaluate("""() => {
        const fetchNow = window.fetch.bind(window);
        let calls = 0;
        window.heldAnswerReturned = false;
        window.fetch = async (...args) => {
            const response = await fetchNow(...args);
            if (String(args[0]).startsWith('/v1/predict') && ++calls === 1) {
                await new Promise((done) => setTimeout(done, 1500));
                window.heldAnswerReturned = true;
            }
            return response;
        };
    }""")
    answers: list[Any] = []
    page.on("response", lambda response: "/v1/predict" in response.url and answers.append(response))
    page.set_input_files("#file", str(photos_dir / GROUP_PHOTO))
    page.set_input_files("#file", str(photos_dir / "smahesh29_man1.jpg"))
    page.locator("#status", has_text="1 face in smahesh29_man1.jpg").wait_for()
    for _ in range(900):  # the held answer reaches the page (however loaded the machine)
        if page.evaluate("() => window.heldAnswerReturned"):
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)  # and the page has handled it
    assert len(answers) == 2 and "1 face in smahesh29_man1.jpg" in page.inner_text("#status")
    (body,) = [answer.json() for answer in answers if len(answer.json()["faces"]) == 1]
    check_drawing_and_table(page, body)


def test_an_error_after_a_photo_takes_the_photos_faces_off_the_page(page: Any, photos_dir: Path) -> None:
    upload_and_wait(page, lambda: page.set_input_files("#file", str(photos_dir / "smahesh29_man1.jpg")))
    assert page.is_visible("#result")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just text"})
    page.locator("#status.error").wait_for()
    assert not page.is_visible("#result")


def test_a_webp_the_browser_does_not_turn_gets_its_boxes_on_a_blank_canvas(page: Any, photos_dir: Path,
                                                                            tmp_path: Path) -> None:
    """Chromium ignores a WebP's EXIF orientation, which the server applies: the boxes would land beside the faces."""
    from PIL import Image

    photo = Image.open(photos_dir / "smahesh29_man1.jpg").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: upright again
    path = tmp_path / "turned.webp"
    photo.save(path, "WEBP", exif=exif.tobytes())
    body = upload_and_wait(page, lambda: page.set_input_files("#file", str(path)))
    assert (body["image"]["width"], body["image"]["height"]) == Image.open(photos_dir / "smahesh29_man1.jpg").size
    assert len(body["faces"]) == 1 and "turned otherwise than its EXIF orientation" in page.inner_text("#status")


def test_a_point_age_model_shows_no_interval_and_no_group_confidence(
        browser: Any, photos_dir: Path, server_args: list[str], tmp_path: Path) -> None:
    """Vu's net regresses one age: its answer has no age_range and no group confidence (null), and the table
    shows a dash and no percentage for them rather than failing on the null."""
    pytest.importorskip("torch", reason="exporting Vu's net needs torch")
    from agegender.export import export_onnx
    from agegender.models import create_model
    from tests.conftest import running_server

    model = export_onnx(create_model("vu_multitask").eval(), tmp_path / "vu.onnx")
    args = [*server_args[:server_args.index("--model")], "--model", str(model),
            *server_args[server_args.index("--model") + 2:]]
    with running_server(args, tmp_path / "server.log") as url:
        with open_page(browser, url) as page:
            body = upload_and_wait(page, lambda: page.set_input_files("#file", str(photos_dir / GROUP_PHOTO)))
            assert body["faces"] and body["faces"][0]["age_range"] is None
            check_drawing_and_table(page, body)
            cells = page.locator("#faces tbody tr").nth(0).locator("td").all_inner_texts()
            assert cells[3] == "—" and cells[4].strip() == body["faces"][0]["age_group"], cells
            assert "%" in cells[1]  # gender keeps its confidence


def test_the_api_docs_render_from_this_server_alone(browser: Any, server_url: str) -> None:
    """/docs loaded Swagger UI from a CDN: blank offline. Now its operations show, and nothing is fetched from
    another site (``open_page`` fails the test on any such request or script error)."""
    def operations_listed(page: Any) -> None:
        page.locator(".opblock-summary-path", has_text="/v1/predict").wait_for()

    with open_page(browser, server_url, "/docs", operations_listed) as page:
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert {"/v1/predict", "/v1/models", "/healthz"} <= {p.strip().replace("\u200b", "") for p in paths}, paths
