"""The explorer page as a user opens it: headless Chromium (selenium; software WebGL) loads the site that write_site
made for the digits map, and the page's own state, panel, selects, hover, export and screenshot are checked."""
import time

import numpy as np
import pytest
from browser import (IMG_LOADED, bokeh_model, deep_eval, deep_query, needs_browser, severe_errors, wait_for,
                     wait_for_bokeh)

pytest.importorskip("bokeh")
pytestmark = needs_browser

def set_value(driver, name: str, value: str) -> None:
    """Set a Bokeh widget's value as a user's choice would (its JS callbacks run)."""
    driver.execute_script("Bokeh.documents[0].get_model_by_name(arguments[0]).value = arguments[1];", name, value)


def drawn(driver) -> int:
    """How many points the scatter draws now (the filter's rows; all without one)."""
    return driver.execute_script("""
        const f = Bokeh.documents[0].get_model_by_name('filter').indices;
        const n = Bokeh.documents[0].get_model_by_name('points').data.x.length;
        return f == null ? n : f.length;""")


def test_site_opens_with_points_counts_and_a_row_thumbnail(driver, digits_site, tmp_path):
    from PIL import Image

    data, index = digits_site
    row = int(np.flatnonzero(data.thumbs)[3])
    driver.get(index.as_uri() + f"#row={row}")
    wait_for_bokeh(driver)
    assert bokeh_model(driver, "points", "m.data.x.length") == len(data) == 1797
    counts = wait_for(lambda: deep_eval(driver, "#gc-counts", "el.textContent"), what="the counts line")
    assert counts.startswith("1,797 images · 10 clusters · 45 noise · AMI 0.61"), counts
    src = wait_for(lambda: deep_eval(driver, "#gc-thumb", IMG_LOADED), what="the thumbnail of the #row")
    assert src == f"thumbs/{row}.webp"
    cells = deep_eval(driver, "#gc-neighbours", "el.children.length")
    assert cells == 9  # the row's nearest neighbours, each with its thumbnail or a 'no image' box
    time.sleep(1)
    shot = tmp_path / "explore.png"
    driver.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 15 and (pixels < 200).mean() > 0.02, pixels.std()  # points and text drawn, not blank
    assert severe_errors(driver) == []


def test_colour_by_and_show_filter(driver, digits_site):
    data, index = digits_site
    driver.get(index.as_uri())
    wait_for_bokeh(driver)
    assert set(bokeh_model(driver, "colour", "m.options")) == {
        "cluster", "class", "silhouette", "outlier score", "duplicates"}
    for choice, field in (("class", "label"), ("silhouette", "sil"), ("outlier score", "outlier"),
                          ("duplicates", "dup"), ("cluster", "cluster")):
        set_value(driver, "colour", choice)
        assert bokeh_model(driver, "map", "m.glyph.fill_color.field") == field
        time.sleep(0.3)  # a frame is drawn with the new colours
    assert drawn(driver) == len(data)
    biggest, size = next(iter(data.cluster_sizes().items()))
    set_value(driver, "show", f"c:{biggest}")
    assert drawn(driver) == size < len(data)
    assert deep_query(driver, "#gc-shown").get_attribute("data-shown") == str(size)
    set_value(driver, "show", "t:3")
    assert drawn(driver) == int((data.label_true == 3).sum())
    set_value(driver, "show", "all")
    assert drawn(driver) == len(data)
    assert severe_errors(driver) == []


def test_selection_panel_and_csv_export(driver, digits_site):
    data, index = digits_site
    driver.get(index.as_uri())
    wait_for_bokeh(driver)
    driver.execute_script("Bokeh.documents[0].get_model_by_name('points').selected.indices = [...Array(300).keys()]")
    set_value(driver, "show", "c:2")  # the selection is cut to the rows shown
    selected = bokeh_model(driver, "points", "m.selected.indices")
    assert sorted(selected) == [i for i in range(300) if data.cluster[i] == 2]
    set_value(driver, "show", "all")
    driver.execute_script("Bokeh.documents[0].get_model_by_name('points').selected.indices = [...Array(200).keys()]")
    heading = wait_for(lambda: deep_eval(driver, "#gc-selected", "el.textContent"), what="the panel's heading")
    assert heading == "200 selected"
    grid = deep_eval(driver, ".gc-grid", "el.querySelectorAll('img').length")
    assert grid == min(48, int(data.thumbs[:200].sum()))
    driver.execute_script("window.__csv = null; URL.createObjectURL = (b) => { window.__csv = b; return 'data:,'; };")
    deep_query(driver, "button").click()
    csv = driver.execute_async_script("const done = arguments[0]; "
                                      "const wait = () => window.__csv ? window.__csv.text().then(done) : "
                                      "setTimeout(wait, 100); wait();")
    lines = csv.splitlines()
    assert lines[0] == "row,cluster,class,path" and len(lines) == 201
    assert lines[1] == f"0,{data.cluster[0]},{data.class_name(0)},{data.paths[0]}"
    assert severe_errors(driver) == []


def test_hover_shows_the_thumbnail(driver, digits_site):
    from selenium.webdriver.common.action_chains import ActionChains

    data, index = digits_site
    driver.get(index.as_uri())
    wait_for_bokeh(driver)
    i = int(np.flatnonzero(data.thumbs)[0])
    x, y = driver.execute_script("""
        const rv = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name('map'));
        const box = rv.plot_view.canvas_view.el.getBoundingClientRect();
        return [box.left + rv.glyph.sx[arguments[0]], box.top + rv.glyph.sy[arguments[0]]];""", i)
    ActionChains(driver).move_by_offset(int(x), int(y)).perform()
    src = wait_for(lambda: deep_eval(driver, "img[src^=thumbs]:not(.gc-cell img)", IMG_LOADED),
                   what="a thumbnail in the tooltip")
    assert src.startswith("thumbs/") and src.endswith(".webp")
    assert severe_errors(driver) == []


def test_notebook_mode_with_inline_thumbnails(driver, tmp_path):
    import base64
    import io

    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    from PIL import Image

    from gpuclust.explore.data import MapData
    from gpuclust.explore.page import build_layout

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "WEBP")
    uri = "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode()
    n = 200
    rng = np.random.default_rng(0)
    data = MapData(rows=np.arange(n) * 7, x=rng.normal(size=n), y=rng.normal(size=n), cluster=rng.integers(0, 4, n))
    page = tmp_path / "notebook.html"
    page.write_text(file_html(build_layout(data, thumb_urls=[uri if i % 2 else "" for i in range(n)]), INLINE, "nb"))
    driver.get(page.as_uri())
    wait_for_bokeh(driver)
    driver.execute_script("Bokeh.documents[0].get_model_by_name('points').selected.indices = [3]")
    src = wait_for(lambda: deep_eval(driver, "#gc-thumb", IMG_LOADED), what="the inline thumbnail")
    assert src == uri
    assert severe_errors(driver) == []
