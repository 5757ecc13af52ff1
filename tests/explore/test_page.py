"""The explorer page built in Python (no browser): standalone HTML, binary numeric sources with no per-row URL
strings, notebook mode with inline thumbnails, the site's files, and one-line errors for inconsistent MapData."""
import os

import numpy as np
import pytest

pytest.importorskip("bokeh")

from gpuclust.errors import UserError  # noqa: E402
from gpuclust.explore.data import MapData  # noqa: E402
from gpuclust.explore.page import (build_layout, cluster_palette, counts_line, page_html, point_columns,  # noqa: E402
                                   write_site)


def synthetic(n: int, k: int = 5, seed: int = 0, neighbours: int = 4) -> MapData:
    """n random points in k clusters (a tenth noise), labels, silhouettes, neighbours and thumbnails on even rows."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, k, n)
    cluster[rng.random(n) < 0.1] = -1
    return MapData(rows=np.arange(n, dtype=np.int64) + 100, x=rng.normal(size=n).astype(np.float32),
                   y=rng.normal(size=n).astype(np.float32), cluster=cluster, label_true=rng.integers(0, 3, n),
                   classes=["cat", "dog", "bird"], silhouette=rng.uniform(-1, 1, n).astype(np.float32),
                   neighbours=rng.integers(0, n, (n, neighbours)).astype(np.int32),
                   neighbour_sim=rng.uniform(0, 1, (n, neighbours)).astype(np.float32),
                   thumbs=np.arange(n) % 2 == 0, metrics={"ami": 0.671, "ari": None})


def model(layout, name: str):
    return layout.select_one({"name": name})


def test_page_is_standalone_and_small():
    html = page_html(synthetic(2000))
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<script src=" not in html.replace(" ", "") and "cdn.bokeh.org" not in html  # BokehJS inlined
    assert "Bokeh.embed" in html or "embed_items" in html
    assert len(html) < 4_000_000  # BokehJS is about 1.5 MB; 2,000 rows add little
    assert "thumbs/100.webp" not in html and "thumbs/102.webp" not in html  # URLs are made in the page's JS


def test_page_grows_by_bytes_per_row_not_by_strings():
    small, big = len(page_html(synthetic(2_000))), len(page_html(synthetic(22_000)))
    per_row = (big - small) / 20_000
    # x, y, row, cluster, thumb, label, silhouette (~20 bytes) and 4 neighbours (~24 bytes), base64: ~60 bytes
    assert per_row < 70, per_row


def test_points_source_holds_numeric_arrays():
    data = synthetic(500)
    layout = build_layout(data)
    src = model(layout, "points")
    assert set(src.data) == {"x", "y", "row", "cluster", "thumb", "label", "sil"}
    for name, col in src.data.items():
        assert isinstance(col, np.ndarray) and col.dtype.kind in "fiu", name  # binary in the page, no strings
    np.testing.assert_array_equal(src.data["row"], data.rows)
    np.testing.assert_array_equal(src.data["cluster"], data.cluster)
    np.testing.assert_array_equal(src.data["x"], data.x)
    assert src.data["thumb"].sum() == 250
    nb = model(layout, "neighbours")
    assert len(nb.data["nb"]) == 500 * 4 and nb.data["nb"].dtype == np.int32
    np.testing.assert_allclose(nb.data["sim"][:4] / 10000, data.neighbour_sim[0], atol=1e-4)


def test_curate_columns_become_colour_choices():
    data = synthetic(300)
    data.columns = {"outlier_score": np.linspace(0, 1, 300), "duplicate_group": np.r_[[0, 0, 1, 1], [-1] * 296]}
    layout = build_layout(data)
    assert model(layout, "colour").options == ["cluster", "class", "silhouette", "outlier score", "duplicates"]
    assert {"outlier", "dup"} <= set(point_columns(data))
    bare = MapData(rows=np.arange(3), x=np.zeros(3), y=np.zeros(3), cluster=np.array([0, 1, -1]))
    assert model(build_layout(bare), "colour").options == ["cluster"]


def test_show_options_and_counts_line():
    data = synthetic(1000)
    opts = dict(model(build_layout(data), "show").options)
    sizes = data.cluster_sizes()
    assert opts["all"] == "all (1,000)" and opts["c:-1"] == f"noise ({sizes[-1]:,})"
    assert opts["c:0"] == f"cluster 0 ({sizes[0]:,})"
    assert opts["t:1"].startswith("dog (")
    assert counts_line(data) == f"1,000 images · 5 clusters · {sizes[-1]:,} noise · AMI 0.67"


def test_cluster_palette_has_no_grey_and_cycles():
    pal = cluster_palette(40)
    assert len(pal) == 40 and pal[0] == pal[18] and "#7f7f7f" not in pal and "#c7c7c7" not in pal


def test_thumb_urls_mode():
    data = synthetic(50)
    urls = [f"data:image/webp;base64,AAAA{i}" if i % 5 else "" for i in range(50)]
    layout = build_layout(data, thumb_urls=urls)
    assert model(layout, "thumb_urls").data["url"] == urls
    assert "data:image/webp;base64,AAAA7" in page_html(data, thumb_urls=urls)


@pytest.mark.parametrize("broken, words", [
    (lambda d: setattr(d, "x", d.x[:-1]), "MapData.x has 49 entries, rows has 50"),
    (lambda d: setattr(d, "paths", ["a"] * 3), "MapData.paths has 3 entries"),
    (lambda d: setattr(d, "neighbour_sim", None), "neighbours and neighbour_sim"),
    (lambda d: setattr(d, "neighbour_sim", d.neighbour_sim[:, :2]), "same shape"),
    (lambda d: d.columns.update(outlier_score=np.zeros(7)), "columns['outlier_score'] has 7"),
])
def test_inconsistent_map_data_is_a_user_error(broken, words):
    data = synthetic(50)
    broken(data)
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        build_layout(data)


def test_empty_map_and_html_in_names_are_handled():
    with pytest.raises(UserError, match="no rows"):
        build_layout(MapData(rows=np.zeros(0), x=np.zeros(0), y=np.zeros(0), cluster=np.zeros(0, int)))
    data = synthetic(30)
    data.classes, data.title = ["<b>cat</b>", "dog", "bird"], "<script>x</script>"
    data.label_true = np.zeros(30, int)  # every cluster's majority class is the first
    layout = build_layout(data)
    assert "&lt;b&gt;cat&lt;/b&gt; (100%)" in model(layout, "legend").text and "<b>" not in model(layout, "legend").text
    assert "<h1>&lt;script&gt;x&lt;/script&gt;</h1>" in model(layout, "counts").text


def test_thumb_urls_of_the_wrong_length_is_a_user_error():
    with pytest.raises(UserError, match="thumb_urls has 2 entries, rows has 50"):
        page_html(synthetic(50), thumb_urls=["", ""])


def test_write_site_links_thumbnails_and_sets_thumbs(tmp_path):
    data = synthetic(20)
    data.thumbs = None
    cache = tmp_path / "cache"
    cache.mkdir()
    files = {}
    for r in (100, 105, 119):
        files[r] = cache / f"any-name-{r}.webp"
        files[r].write_bytes(b"RIFF-fake-webp-%d" % r)
    index = write_site(tmp_path / "site", data, files)
    assert index == tmp_path / "site" / "index.html" and index.read_text().rstrip().endswith("</html>")
    assert sorted(p.name for p in (tmp_path / "site" / "thumbs").iterdir()) == ["100.webp", "105.webp", "119.webp"]
    assert (tmp_path / "site" / "thumbs" / "105.webp").read_bytes() == b"RIFF-fake-webp-105"
    assert os.stat(files[105]).st_ino == os.stat(tmp_path / "site" / "thumbs" / "105.webp").st_ino  # a hard link
    assert np.flatnonzero(data.thumbs).tolist() == [0, 5, 19]
    index2 = write_site(tmp_path / "site", data, files)  # writing again over the same site works
    assert index2.is_file()


def test_write_site_missing_thumbnail_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_site(tmp_path / "site", synthetic(5), {100: tmp_path / "nope.webp"})
