"""The page at `/` in a real browser: Debian's Chromium, headless, driven by Playwright (which never downloads a
browser of its own here: executable_path=/usr/bin/chromium). Upload a rendered page, draw a box with the mouse,
run, wait for the streamed answer, check its text and the rendered table / formula; a screenshot stays in the
test's tmp dir."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from got.inference import GOT
from got.serve import Settings, create_app
from serve_helpers import ForceText, live_server, text_page, tiny_model_dir

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)", allow_module_level=True)

FORMATTED = r"Totals \begin{tabular}{|c|c|}\hline a & b \\ \hline 1 & 2 \\ \hline\end{tabular} where \(x^{2}+1\)"


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def draw_box(page, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag on the image (fractions of its shown size), as a person would with the mouse."""
    area = page.locator("#overlay").bounding_box()
    page.mouse.move(area["x"] + x0 * area["width"], area["y"] + y0 * area["height"])
    page.mouse.down()
    page.mouse.move(area["x"] + x1 * area["width"], area["y"] + y1 * area["height"], steps=8)
    page.mouse.up()


def open_and_run(browser, url: str, image: Path, mode: str, box: tuple[float, float, float, float], shot: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(url)
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('image').naturalWidth > 0 && "
                               "!document.getElementById('run').disabled")
        page.wait_for_function("document.getElementById('overlay').width > 0")
        if mode != "plain":
            page.select_option("#mode", mode)
        draw_box(page, *box)
        drawn = [int(v) for v in page.input_value("#box").split(",")]
        page.click("#run")
        page.wait_for_function("document.body.dataset.done === '1' || "
                               "document.getElementById('status').className === 'error'", timeout=120_000)
        page.screenshot(path=str(shot), full_page=True)
        return page.inner_text("#answer"), page.inner_text("#status"), drawn, page
    except Exception:
        page.close()
        raise


def test_box_formatted_answer_streams_and_renders(browser, tmp_path, monkeypatch):
    from transformers import LogitsProcessorList

    got = GOT.from_pretrained(tiny_model_dir(tmp_path / "tiny"), dtype="float32", device="cpu")
    monkeypatch.setitem(got.generation, "logits_processor", LogitsProcessorList([ForceText(got.tokenizer, FORMATTED)]))
    image = tmp_path / "page.png"
    text_page(["Totals", "a b", "1 2"], size=(800, 400)).save(image)
    with live_server(create_app(got, Settings(), model_id="tiny")) as url:
        answer, status, box, page = open_and_run(browser, url, image, "format", (0.05, 0.1, 0.5, 0.6),
                                                 tmp_path / "serve_page.png")
        try:
            assert answer == FORMATTED, status
            assert "format+box" in status and "Done" in status
            assert 30 <= box[0] <= 50 and 30 <= box[1] <= 50 and 390 <= box[2] <= 410 and 230 <= box[3] <= 250
            assert page.locator("#rendered table td").count() == 4
            assert page.locator("#rendered math").count() >= 1
        finally:
            page.close()
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000


def test_default_model_reads_the_boxed_line(browser, tmp_path):
    got = GOT.from_pretrained(None, device="cpu")
    image = tmp_path / "page.png"
    text_page(["The quick brown fox", "jumps over the lazy dog"]).save(image)
    with live_server(create_app(got, Settings(), model_id="got-default")) as url:
        answer, status, box, page = open_and_run(browser, url, image, "plain", (0.01, 0.05, 0.7, 0.28),
                                                 tmp_path / "default_page.png")
        page.close()
    assert answer == got.chat(image, box=tuple(box)), status
    assert "quick brown fox" in answer and "lazy" not in answer
