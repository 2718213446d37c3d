"""The page in a real browser: Debian's Chromium driven by Playwright against uvicorn on 127.0.0.1.

Set ``PNEUMO_E2E_ARTIFACTS=1`` to also keep the screenshots in ``tests/e2e/artifacts/``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server_url(serving, tiny_model: Path) -> Iterator[str]:
    """uvicorn in a thread serving the tiny real checkpoint (untrained scratch CNN at 64 px)."""
    from pneumo.infer.predictor import Predictor

    with serving(Predictor(tiny_model, threads=2), start_timeout_s=30) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    sync_playwright = sync_api.sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server_url: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server_url + "/")
    yield page
    context.close()


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("PNEUMO_E2E_ARTIFACTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACTS / name)
    return shot


def xray_path(full_data: Path) -> Path:
    return min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))


def test_uploaded_xray_shows_label_probability_bar_and_heatmap(page, full_data: Path,
                                                               tmp_path: Path) -> None:
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_selector("#heatmap:not([hidden])")
    label = page.inner_text("#label")
    assert label in ("NORMAL", "PNEUMONIA")
    probability = float(page.inner_text("#probability"))
    assert 0.0 <= probability <= 1.0
    fill = page.eval_on_selector("#bar-fill", "el => parseFloat(el.style.width)")
    assert fill == pytest.approx(100 * probability, abs=0.1)
    assert page.eval_on_selector("#bar-threshold", "el => parseFloat(el.style.left)") == pytest.approx(50.0)
    assert page.eval_on_selector("#heatmap", "el => el.complete && el.naturalWidth > 0")
    assert page.eval_on_selector("#image", "el => el.complete && el.naturalWidth > 0")
    assert save_screenshot(page, tmp_path, "result.png").stat().st_size > 10_000


def test_dicom_upload_is_shown_from_the_server_rendered_preview(page, full_data: Path, tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from pneumo.data.decode import load_image

    gray = load_image(xray_path(full_data).read_bytes())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", *gray.shape, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
    ds.PixelRepresentation, ds.PixelData = 0, gray.tobytes()
    dicom = tmp_path / "scan.dcm"
    ds.save_as(dicom, enforce_file_format=True)
    page.set_input_files("#file", str(dicom))
    page.wait_for_selector("#heatmap:not([hidden])")
    size = page.eval_on_selector("#image", "el => [el.naturalHeight, el.naturalWidth]")
    assert page.eval_on_selector("#image", "el => el.src.startsWith('data:image/png')")
    assert size == list(gray.shape)
    assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA")


def test_dropping_a_file_on_the_zone_analyses_it(page, full_data: Path) -> None:
    data = base64.b64encode(xray_path(full_data).read_bytes()).decode()
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const zone = document.getElementById("dropzone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }""", [data, "dropped.jpeg"])
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA")
    assert "dragging" not in page.get_attribute("#dropzone", "class")


def test_opacity_slider_works_from_the_keyboard(page, full_data: Path) -> None:
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_selector("#heatmap:not([hidden])")
    page.focus("#opacity")
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    assert page.eval_on_selector("#heatmap", "el => el.style.opacity") == "0.5"
    assert page.inner_text("#opacity-value") == "50%"


def test_a_non_image_is_reported_on_the_page(page, tmp_path: Path) -> None:
    fake = tmp_path / "page.jpg"
    fake.write_bytes(b"<!DOCTYPE html><html><body>not an x-ray</body></html>")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#status.error")
    assert "not an image" in page.inner_text("#status")
    assert page.is_hidden("#heatmap")


def test_an_error_after_a_result_clears_the_result_card(page, full_data: Path, tmp_path: Path) -> None:
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA")
    fake = tmp_path / "notes.jpeg"
    fake.write_bytes(b"these are my notes, not an x-ray\n" * 20)
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#status.error")
    assert page.is_hidden("#result")
    assert page.inner_text("#label") == "—" and page.inner_text("#probability") == "—"
    assert page.inner_text("#calibrated") == "—" and page.inner_text("#facts") == ""
    assert page.get_attribute("#image", "src") is None and page.get_attribute("#heatmap", "src") is None
    page.set_input_files("#file", str(xray_path(full_data)))  # and the page still works afterwards
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.is_visible("#result") and page.inner_text("#label") in ("NORMAL", "PNEUMONIA")


def test_a_late_answer_to_an_earlier_upload_never_replaces_the_latest(page, full_data: Path, tmp_path: Path) -> None:
    """Two uploads in a row: the first one's answer, arriving last, replaced the second's result (web review: a slow
    pneumonia film chosen, then a normal one: the page ended on PNEUMONIA with the first film)."""
    held = []

    def hold_the_first(route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)  # the first upload's request waits until the second one is shown

    page.route("**/api/v1/predict**", hold_the_first)
    first = tmp_path / "first.jpeg"
    first.write_bytes(b"these are my notes, not an x-ray\n" * 20)  # its answer would be an error
    page.set_input_files("#file", str(first))
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Analysing')")
    page.wait_for_timeout(200)
    assert len(held) == 1
    second = xray_path(full_data)
    page.set_input_files("#file", str(second))
    page.wait_for_selector("#heatmap:not([hidden])")
    with contextlib.suppress(Exception):  # playwright's error for a request the page cancelled
        held[0].continue_()  # the late answer (the page aborted its request: it may already be gone)
    page.wait_for_timeout(1000)
    assert "error" not in (page.get_attribute("#status", "class") or "") and page.is_visible("#result")
    facts = page.inner_text("#facts")
    assert second.name in facts and "Operating point" in facts  # which file and which operating point answered


def test_one_probability_is_shown_and_the_calibrated_one_is_labelled_apart(page, full_data: Path) -> None:
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_selector("#heatmap:not([hidden])")
    raw, calibrated = float(page.inner_text("#probability")), float(page.inner_text("#calibrated"))
    assert 0.0 <= raw <= 1.0 and 0.0 <= calibrated <= 1.0
    assert "Model score P(pneumonia)" in page.inner_text("#bar-title")
    assert "uncalibrated" in page.inner_text("#probability-note")
    assert "Temperature-scaled score" in page.inner_text("#result")
    assert "P(PNEUMONIA)" not in page.inner_text("#facts")  # no second, unlabelled probability


def test_research_use_notice_and_model_facts_are_shown(page) -> None:
    assert "Research use only — not a medical device" in page.inner_text("#notice")
    assert page.is_visible("#notice")
    page.wait_for_selector("#model-facts dt:has-text('Model')")
    assert "scratch_cnn" in page.inner_text("#model-facts")


def test_file_chooser_is_reachable_by_keyboard(page) -> None:
    page.keyboard.press("Tab")  # skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"


def test_api_docs_render_offline_with_nothing_loaded_from_other_hosts(browser, server_url: str) -> None:
    local = urlsplit(server_url).netloc
    elsewhere: list[str] = []
    csp_violations: list[str] = []

    def only_local(route) -> None:
        if urlsplit(route.request.url).netloc == local:
            route.continue_()
        else:  # a CDN is unreachable: fail the request, remember that it was tried
            elsewhere.append(route.request.url)
            route.abort()

    context = browser.new_context()
    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("console", lambda message: csp_violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    try:
        page.goto(server_url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title:has-text('pneumo')")
        page.click(".opblock-summary-path[data-path='/api/v1/predict']")
        page.wait_for_selector(".opblock-post.is-open .try-out__btn")  # the operation's details rendered
    finally:
        context.close()
    assert elsewhere == [] and csp_violations == []


def test_a_heat_map_the_server_cannot_draw_still_shows_the_verdict_and_a_busy_server_is_said(
        page, full_data: Path) -> None:
    """A model folder changed since start-up makes the heat map a 503 "heat map unavailable": every upload from the
    page ended "Not analysed" while the API without heat maps answered (an operations review)."""
    import json

    def heat_map_refused(route) -> None:
        if "heatmap=true" in route.request.url:
            route.fulfill(status=503, content_type="application/json",
                          body=json.dumps({"detail": "heat map unavailable: the folder changed"}))
        else:
            route.continue_()

    page.route("**/api/v1/predict**", heat_map_refused)
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Done')")
    assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA") and page.is_hidden("#heatmap")
    assert "heat map unavailable" in page.inner_text("#heatmap-caption")
    page.unroute("**/api/v1/predict**")
    page.route("**/api/v1/predict**", lambda route: route.fulfill(
        status=503, content_type="application/json", body=json.dumps({"detail": "busy: try again in 1 s"})))
    page.set_input_files("#file", str(xray_path(full_data)))
    page.wait_for_selector("#status.error")
    assert "Not analysed: busy" in page.inner_text("#status")


def test_after_the_api_key_is_given_keyboard_focus_is_on_the_file_control(browser, serving, tiny_model: Path,
                                                                          full_data: Path) -> None:
    """An accessibility audit: the key's form was hidden while its field had focus, which left focus on the page's
    body: the next Tab started again from the top."""
    from pneumo.infer.predictor import Predictor

    with serving(Predictor(tiny_model, threads=1), api_key="s3cret") as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(url + "/")
        page.set_input_files("#file", str(xray_path(full_data)))
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")
        page.wait_for_selector("#label.positive, #label.negative")
        assert page.evaluate("document.activeElement.id") == "file"
        context.close()
