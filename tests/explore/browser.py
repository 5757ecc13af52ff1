"""Helpers of the explorer's browser tests: a headless Chromium driven by selenium (Debian's `chromium` and
`chromedriver`; .ci/run installs them), JS that reads the Bokeh page's state through its shadow DOM, and a MapData of
the packaged digits set. Tests in tests/explore import them as `from browser import ...`, others as
`from explore.browser import ...`."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or not HAVE_SELENIUM,
    reason="needs chromium, chromedriver and selenium (apt install chromium chromium-driver; pip install selenium)")

# querySelector that also looks inside shadow roots (Bokeh renders each widget in one)
DEEP_QUERY = """
const deep = (root, sel) => {
  const hit = root.querySelector(sel);
  if (hit) return hit;
  for (const el of root.querySelectorAll("*")) {
    if (el.shadowRoot) { const h = deep(el.shadowRoot, sel); if (h) return h; }
  }
  return null;
};
"""


def deep_query(driver, selector: str):
    """The first element matching `selector` anywhere in the page, shadow roots included (a WebElement or None)."""
    return driver.execute_script(DEEP_QUERY + "return deep(document, arguments[0]);", selector)


def deep_eval(driver, selector: str, expr: str = "el"):
    """Evaluate the JS expression `expr` on the first element matching `selector` (as `el`); None where none does."""
    return driver.execute_script(
        DEEP_QUERY + f"const el = deep(document, arguments[0]); return el == null ? null : ({expr});", selector)


IMG_LOADED = "el.complete && el.naturalWidth > 0 ? el.getAttribute('src') : null"  # deep_eval: a loaded <img>'s src


def bokeh_model(driver, name: str, expr: str = "m"):
    """Evaluate `expr` (JS, `m` the model) on the page's Bokeh model named `name`."""
    return driver.execute_script(
        f"const m = Bokeh.documents[0].get_model_by_name(arguments[0]); return {expr};", name)


def wait_for(probe, timeout: float = 60.0, what: str = "condition"):
    """Call `probe()` until it returns something truthy and return that; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = probe()
        except Exception:  # the page is still loading
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_bokeh(driver, timeout: float = 120.0) -> None:
    """Wait until BokehJS has built the page's document and drawn it (every root view idle)."""
    wait_for(lambda: driver.execute_script("return window.Bokeh != null && Bokeh.documents.length > 0 && "
                                           "Bokeh.documents[0].is_idle"), timeout, "the Bokeh page")


def severe_errors(driver) -> list[dict]:
    """The browser console's SEVERE entries since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def make_driver(width: int = 1400, height: int = 900):
    """A headless Chromium (software WebGL through SwiftShader) that keeps its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", "--hide-scrollbars",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def digits_map(thumb_dir: Path, every: int = 3):
    """A MapData of the packaged `digits` set (1,797 8x8 images): x, y from PCA of the pixels, 10 k-means clusters
    with every 40th row made noise, cosine neighbours, silhouettes, an outlier score and a few duplicate groups,
    made-up paths; and real 64 px WebP thumbnails in `thumb_dir` for all rows but every `every`-th (those have none).
    Returns (data, {dataset row: thumbnail file})."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_samples
    from sklearn.neighbors import NearestNeighbors

    from gpuclust import load_dataset
    from gpuclust.explore.data import MapData

    ds = load_dataset("digits")
    images = [ds.load(i) for i in range(len(ds))]
    X = np.stack([np.asarray(im.convert("L"), np.float32).ravel() for im in images])
    xy = PCA(2, random_state=0).fit_transform(X).astype(np.float32)
    cluster = KMeans(10, n_init=3, random_state=0).fit_predict(X).astype(np.int64)
    cluster[::40] = -1
    dist, nb = NearestNeighbors(n_neighbors=9, metric="cosine").fit(X).kneighbors()
    sil = silhouette_samples(X, cluster).astype(np.float32)
    sil[cluster < 0] = np.nan
    dup = np.full(len(ds), -1, np.int64)
    dup[:6] = [0, 0, 1, 1, 2, 2]
    thumb_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, im in enumerate(images):
        if i % every:
            files[i] = thumb_dir / f"{i}.webp"
            im.resize((64, 64), Image.NEAREST).save(files[i], "WEBP")
    data = MapData(rows=np.arange(len(ds), dtype=np.int64), x=xy[:, 0], y=xy[:, 1], cluster=cluster,
                   label_true=np.asarray(ds.labels, np.int64), classes=list(ds.classes),
                   paths=[f"/data/digits/{ds.labels[i]}/{i:04d}.png" for i in range(len(ds))], silhouette=sil,
                   columns={"outlier_score": dist[:, 0].astype(np.float32), "duplicate_group": dup},
                   neighbours=nb.astype(np.int32), neighbour_sim=(1 - dist).astype(np.float32),
                   title="digits, pixels", metrics={"ami": 0.61, "silhouette": 0.14})
    return data, files



def open_explorer(index: Path, row: int | None = None, screenshot: Path | None = None,
                  size: tuple[int, int] = (1400, 900)) -> dict:
    """Open an exported explorer (index.html) in headless Chromium, optionally at `#row=ROW`, and read what it
    shows: points (rows in the page's data source), counts (the header's line), thumbnail (the src of the row's
    loaded thumbnail), neighbours (thumbnails listed for it), errors (SEVERE console entries), open_s (seconds
    until BokehJS had drawn the page). Saves a screenshot when asked."""
    driver = make_driver(*size)
    try:
        driver.set_page_load_timeout(300)
        start = time.monotonic()
        driver.get(Path(index).resolve().as_uri() + ("" if row is None else f"#row={row}"))
        wait_for_bokeh(driver, timeout=300)
        state = {"open_s": round(time.monotonic() - start, 2),
                 "points": bokeh_model(driver, "points", "m.data.x.length"),
                 "counts": deep_eval(driver, "#gc-counts", "el.textContent")}
        if row is not None:
            state["thumbnail"] = wait_for(lambda: deep_eval(driver, "#gc-thumb", IMG_LOADED), 60,
                                          "the row's thumbnail")
            state["neighbours"] = deep_eval(driver, "#gc-neighbours", "el.querySelectorAll('img').length")
        if screenshot is not None:
            time.sleep(0.5)  # the WebGL canvas's last frame
            driver.save_screenshot(str(screenshot))
        state["errors"] = severe_errors(driver)
        return state
    finally:
        driver.quit()
