"""Fixtures of the explorer's tests: a headless Chromium (`driver`) and the site of the digits map (`digits_site`);
the helpers themselves are in browser.py."""
from __future__ import annotations

import pytest

from browser import digits_map, make_driver


@pytest.fixture
def driver():
    """A fresh headless Chromium for one test, quit afterwards."""
    d = make_driver()
    d.set_page_load_timeout(180)
    d.set_script_timeout(120)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def digits_site(tmp_path_factory):
    """The explorer site of `digits_map` written by write_site: (data, path of index.html)."""
    from gpuclust.explore.page import write_site

    base = tmp_path_factory.mktemp("digits-site")
    data, files = digits_map(base / "thumb-cache")
    return data, write_site(base / "site", data, files)
