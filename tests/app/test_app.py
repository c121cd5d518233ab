"""`synfer app` served for real: driven through `gradio_client` and by headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium). One server (the bundled generator) serves both tests."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio")
from synfer.app.serve import serve_in_background  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``synfer app`` in a child process on a free port; yields (url, its output folder)."""
    out = tmp_path_factory.mktemp("app") / "out"
    home, tmp = out.parent / "home", out.parent / "tmp"  # the app may write neither here nor anywhere but `out`
    home.mkdir()
    tmp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp), "HOME": str(home), "XDG_CACHE_HOME": str(home)}
    proc, url = serve_in_background(out, env=env)
    yield url, out
    proc.terminate()
    proc.wait(timeout=30)


def test_endpoints_through_gradio_client(server: tuple[str, Path]) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, out = server
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(out.parent / "downloads"))
    assert {"/generate", "/preset", "/read_aus", "/edit", "/make_dataset"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    sliders = client.predict("happiness", "class mean", api_name="/preset")
    assert len(sliders) == 22 and max(sliders) > 0.2
    gallery, chart, probs, status = client.predict("happiness", "", False, 3, 4, 7, 5, 5, 0, *sliders,
                                                   api_name="/generate")
    assert len(gallery) == 4 and Path(chart).is_file() and probs["label"] in ("happiness", "neutral", "surprise")
    assert Path(gallery[0]["image"]).stat().st_size > 100 and "4 faces in" in status
    # bad input: a message, and the server goes on serving
    with pytest.raises(AppError, match="every count is 0"):
        client.predict("empty", "class mean", 0, 0, *[0] * 8, api_name="/make_dataset")
    with pytest.raises(AppError, match="dataset name"):
        client.predict("../escape", "class mean", 0, 0, 1, *[0] * 7, api_name="/make_dataset")
    bad = out.parent / "tmp" / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(AppError, match="cannot identify image file"):
        client.predict(handle_file(str(bad)), api_name="/read_aus")
    read = client.predict(handle_file(gallery[0]["image"]), api_name="/read_aus")
    assert len(read) == 22 and all(0 <= v <= 1 for v in read)
    before_after, pasted = client.predict(handle_file(gallery[0]["image"]), "sadness", 0.6, False, *sliders,
                                          api_name="/edit")
    assert len(before_after) == 2 and pasted is None
    assert not (out.parent / "escape").exists()
    written = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert written <= {".gradio", "datasets", "exports"}, written
    assert not [p for p in (out.parent / "home").rglob("*")], "the app wrote into HOME"


@pytest.mark.slow
def test_make_a_dataset_through_the_page(server: tuple[str, Path]) -> None:
    """Two faces: the dataset folder, its ImageFolder export and the zip, all under the app's output folder."""
    import zipfile

    from gradio_client import Client

    url, out = server
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(out.parent / "downloads"))
    status, zip_path = client.predict("two", "class mean", 0, 7, 1, 1, *[0] * 6, api_name="/make_dataset")
    assert "2 faces" in status and zip_path.endswith(".zip")
    assert (out / "datasets" / "two" / "dataset.json").is_file() and (out / "exports" / "two.zip").is_file()
    names = zipfile.ZipFile(out / "exports" / "two.zip").namelist()
    assert "metadata.parquet" in " ".join(names) and sum(n.endswith(".png") for n in names) == 2


@pytest.mark.slow
def test_stop_ends_a_dataset_run_and_the_same_settings_continue_it(server: tuple[str, Path]) -> None:
    import time

    from gradio_client import Client

    url, out = server
    folder = out / "datasets" / "big"

    def children() -> list[str]:  # `synfer generate` processes writing this folder
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"generate" in args and str(folder).encode() in args:
                found.append(cmdline.parent.name)
        return found

    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(out.parent / "downloads"))
    job = client.submit("big", "class mean", 0, 0, *[400] * 8, api_name="/make_dataset")
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("records-*.parquet")):
        time.sleep(0.5)
    assert children(), "the dataset run should be going"
    job.cancel()
    deadline = time.time() + 30
    while time.time() < deadline and children():
        time.sleep(0.5)
    assert not children(), "Stop must end the child process"
    assert (folder / "dataset.json").is_file()  # kept, to be continued with the same settings


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs Debian's chromium and chromium-driver")
def test_the_page_in_a_real_browser(server: tuple[str, Path], tmp_path: Path) -> None:
    """Move an AU slider, apply a preset, generate (the gallery and the measured-AU chart update), edit a
    generated face; the page logs no errors."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    wait = WebDriverWait(driver, 120, poll_frequency=0.2)
    css = lambda sel: driver.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    try:
        url, _ = server
        driver.get(url)
        wait.until(lambda d: css("#generate"))
        number = css("#au-AU12 input[type=number]")[0]
        css("#au-AU12 input[type=range]")[0].send_keys(Keys.END)  # the slider to its maximum
        wait.until(lambda d: number.get_attribute("value") == "1")
        css("[data-testid='class mean-radio-label']")[0].click()  # the preset sets every slider
        wait.until(lambda d: number.get_attribute("value") not in ("1", "0", ""))
        preset_au12 = float(number.get_attribute("value"))
        assert 0 < preset_au12 < 1
        css("#generate")[0].click()
        wait.until(lambda d: len(css("#gallery img")) >= 4 and css("#au-chart img"))
        first_faces = [im.get_attribute("src") for im in css("#gallery img")]
        first_chart = css("#au-chart img")[0].get_attribute("src")
        assert "happiness" in css("#probs")[0].text or "neutral" in css("#probs")[0].text
        css("#au-AU12 input[type=range]")[0].send_keys(Keys.HOME)
        wait.until(lambda d: number.get_attribute("value") == "0")
        css("#generate")[0].click()
        wait.until(lambda d: css("#au-chart img") and css("#au-chart img")[0].get_attribute("src") != first_chart)
        assert [im.get_attribute("src") for im in css("#gallery img")] != first_faces
        face = tmp_path / "face.webp"  # a generated face, fetched from the page, to edit
        face.write_bytes(urllib.request.urlopen(css("#gallery img")[0].get_attribute("src")).read())
        next(t for t in css("button[role=tab]") if "Edit a photo" in t.text).click()
        wait.until(lambda d: css("#photo input[type=file]"))
        css("#photo input[type=file]")[0].send_keys(str(face))
        wait.until(lambda d: css("#photo img"))
        css("#edit")[0].click()
        wait.until(lambda d: len(css("#before-after img")) >= 2)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
