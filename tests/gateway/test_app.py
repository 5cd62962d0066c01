"""An HTML5 application installed with `mimeifs app install`, opened by a real headless
Chromium (selenium + chromedriver): the page fetches a JSON file from another MiMei and
a key of a db MiMei (`/db/...` with a db token from its own URL) through the same
gateway and renders them; the test reads the DOM and keeps a screenshot."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import Node

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver")

APP_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>cities</title>
<script src="app.js" defer></script></head>
<body><h1 id="title">loading</h1><ul id="items"></ul><p id="motto">loading</p></body></html>
"""

APP_JS = """
const token = new URLSearchParams(location.search).get('token');
fetch('/db/citydb/last/motto?token=' + encodeURIComponent(token))
  .then(r => r.ok ? r.json() : {value: 'db HTTP ' + r.status})
  .then(rec => { document.getElementById('motto').textContent = rec.value; });
fetch('/name/citydata/last/cities.json')
  .then(r => { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
  .then(doc => {
    document.getElementById('title').textContent = doc.title;
    const ul = document.getElementById('items');
    for (const c of doc.cities) {
      const li = document.createElement('li');
      li.textContent = c.name + ': ' + c.people;
      li.dataset.people = c.people;
      ul.appendChild(li);
    }
    document.body.dataset.done = 'yes';
  })
  .catch(e => { document.getElementById('title').textContent = 'error ' + e; });
"""

DATA = {"title": "Cities from another MiMei",
        "cities": [{"name": "Lyon", "people": 522250}, {"name": "Kyōto", "people": 1463723},
                   {"name": "Porto", "people": 231962}]}


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    n.run("init")
    n.serve()
    try:
        yield n
    finally:
        n.stop()


def test_app_install_and_render_in_chromium(node, tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cities.json").write_text(json.dumps(DATA, ensure_ascii=False))
    did = node.create("citydata")
    node.run("import", data_dir, did, "--backup")

    db = node.run("create", "--type", "db", "--mark", "citydb").stdout.strip()
    (tmp_path / "db.jsonl").write_text(json.dumps({"type": "string", "key": "motto",
                                                   "value": "Cities, from a db MiMei"}) + "\n")
    node.run("db", "import", db, tmp_path / "db.jsonl")
    node.run("backup", db)
    db_token = node.run("db", "token", f"{db}@0", "--read-only").stdout.strip()

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "index.html").write_text(APP_HTML)
    (app_dir / "app.js").write_text(APP_JS)
    out = node.run("app", "install", app_dir, "--mark", "cities").stdout.strip().splitlines()
    url = out[-2]
    assert url == node.url("/name/cities/last/"), out
    assert out[-1].startswith(node.url("/mm/")) and out[-1].endswith("/0/")
    # a second install of a changed app makes a new version at the same URL
    (app_dir / "app.js").write_text(APP_JS.replace("li.dataset", "li.className = 'city'; li.dataset"))
    out = node.run("app", "install", app_dir, "--mark", "cities").stdout.strip().splitlines()
    assert out[-2] == url and out[-1].endswith("/1/")
    # a mark that names a MiMei which is not an application is refused, nothing changes
    bad = node.run("app", "install", app_dir, "--mark", "citydata", check=False)
    assert bad.returncode == 1 and "not an application" in bad.stderr
    assert node.curl("/name/citydata/last/cities.json").status == 200
    assert node.run("app", "install", data_dir, "--mark", "x", check=False).returncode != 0  # no index.html
    r = node.curl("/name/cities/last/app.js")
    assert r.headers["content-type"] in ("text/javascript", "application/javascript")

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1000,700"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{url}?token={db_token}")
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "yes"
            or d.find_element(By.ID, "title").text.startswith("error"))
        assert driver.find_element(By.ID, "title").text == DATA["title"]
        items = driver.find_elements(By.CSS_SELECTOR, "#items li.city")
        assert [li.text for li in items] == [f"{c['name']}: {c['people']}" for c in DATA["cities"]]
        assert [int(li.get_attribute("data-people")) for li in items] == [c["people"] for c in DATA["cities"]]
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "motto").text != "loading")
        assert driver.find_element(By.ID, "motto").text == "Cities, from a db MiMei"
        shot = tmp_path / "app.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2000
    finally:
        driver.quit()
