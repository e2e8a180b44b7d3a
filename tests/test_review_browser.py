"""``enface review`` in a real browser: headless Chromium from the system packages, via Selenium.

One server and one browser for the module, on a ``spectralis``-preset phantom case
(49 x 1024 x 128) and a small one. Where Chromium or its driver is missing the tests skip
with the install command, except in CI (``CI=true``), where that is a failure. The page's
own performance clock times the first view and B-scan redraws, and its resource timings the
API requests; the numbers are written to ``test-artifacts/review-timings.json`` beside the
screenshot ``review-case.png`` (or under ``$ENFACE_TEST_ARTIFACTS``), not asserted against a
bound. The token must never reach the browser's cookie jar: no response sets a cookie with
it, and a second local server on another port, visited after the page, receives none.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.io.images import read_mask
from enface.review import CaseService, ReviewServer
from enface.synth.eye import generate_case

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
BIG, SMALL = "P0001_OD_V1", "P0002_OS_V1"
ARTIFACTS = Path(os.environ.get("ENFACE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("review-browser") / "data"
    for case_id, kwargs in ((BIG, {"preset": "spectralis"}), (SMALL, {"preset": "tiny", "shape": (8, 32, 64)})):
        ph = generate_case(3, **kwargs)  # type: ignore[arg-type]
        meta = CaseMeta(case_id, case_id[:5], ph.eye, 0, ph.spacing, "phantom", extra={"bm_depth": ph.info["bm_flat"]})
        write_case(root, meta, ph.oct, images={"slo": ph.slo, "faf": ph.faf}, masks={"ga": ph.masks["ga"]})
    write_dataset_info(root, "browser-test", ("oct", "slo", "faf"), ("ga",), ph.spacing)
    return root


@pytest.fixture(scope="module")
def server(dataset: Path) -> Iterator[ReviewServer]:
    srv = ReviewServer(CaseService(dataset, grader="g")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser tests; no headless Chromium / chromedriver / selenium: {INSTALL}")
        pytest.skip(f"no headless Chromium (or chromedriver, or selenium): {INSTALL}")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    options.add_argument("--force-device-scale-factor=1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})  # responses' headers
    browser = webdriver.Chrome(service=Service(paths[1]), options=options)
    browser.set_window_size(1400, 900)
    yield browser
    browser.quit()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Another local web server (a notebook, a dev server): records the headers of what it is sent."""

    seen: ClassVar[list[dict[str, str]]] = []  # each fixture's subclass has its own

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = b"<!doctype html><title>another local server</title><p>hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A second server on 127.0.0.1, another port: its port and the requests it received."""
    seen: list[dict[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


def _response_headers(driver: Any) -> list[dict[str, str]]:
    """The headers of every response the browser received since the last call (Chrome's performance log)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.responseReceived":
            found.append({k.lower(): v for k, v in params["response"].get("headers", {}).items()})
        elif message.get("method") == "Network.responseReceivedExtraInfo":  # the raw headers, Set-Cookie included
            found.append({k.lower(): v for k, v in params.get("headers", {}).items()})
    return found


def _wait(driver: Any, script: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {script}")


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(
        driver,
        "return window.enfaceReview && window.enfaceReview.timings.firstView !== null && window.enfaceReview.S.info",
    )


def _rect(driver: Any, element_id: str) -> dict[str, float]:
    return driver.execute_script(f"return document.getElementById('{element_id}').getBoundingClientRect().toJSON()")


def _actions(driver: Any) -> Any:
    from selenium.webdriver.common.action_chains import ActionChains

    return ActionChains(driver, duration=0)


def _grid(point: tuple[float, float], rect: dict[str, float], rows: int, cols: int) -> tuple[float, float]:
    """Grid (x, y) of a client point on a view at zoom 1: the canvas shows the whole grid, row 0 on top."""
    cx, cy = point
    return ((cx - rect["left"] - 0.0) / 1.0) / rect["width"] * cols, ((cy - rect["top"] - 0.0) / 1.0) / rect[
        "height"
    ] * rows


def _capsule(mask: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], spacing, radius: float) -> None:
    """Set the pixels whose centre lies within ``radius`` mm of the segment p0-p1 (grid x, y)."""
    sh, sw = spacing
    i, j = np.meshgrid(np.arange(mask.shape[0], dtype=float), np.arange(mask.shape[1], dtype=float), indexing="ij")
    px, py = (j + 0.5) * sw, (i + 0.5) * sh
    ax, ay, bx, by = p0[0] * sw, p0[1] * sh, p1[0] * sw, p1[1] * sh
    dx, dy = bx - ax, by - ay
    l2 = dx * dx + dy * dy
    t = np.minimum(1.0, np.maximum(0.0, ((px - ax) * dx + (py - ay) * dy) / l2)) if l2 > 0 else 0.0
    qx, qy = ax + t * dx - px, ay + t * dy - py
    mask[qx * qx + qy * qy <= radius * radius] = 1
    for x, y in (p0, p1):
        mask[int(np.floor(y)), int(np.floor(x))] = 1


def _page_mask(driver: Any, shape: tuple[int, int]) -> np.ndarray:
    return np.array(driver.execute_script("return Array.from(window.enfaceReview.S.masks.grader)"), np.uint8).reshape(
        shape
    )


def _pointer(driver: Any) -> Any:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    return ActionBuilder(driver, duration=0)


def _stroke(driver: Any, points: list[tuple[int, int]]) -> None:
    """Press at the first point, move through the others, release (one pointer, client coordinates)."""
    builder = _pointer(driver)
    builder.pointer_action.move_to_location(*points[0]).pointer_down()
    for p in points[1:]:
        builder.pointer_action.move_to_location(*p)
    builder.pointer_action.pointer_up()
    builder.perform()


def _hover_row(driver: Any, rect: dict[str, float], row: int, rows: int, x_frac: float = 0.8) -> None:
    x = int(rect["left"] + x_frac * rect["width"])
    y = int(rect["top"] + (row + 0.5) / rows * rect["height"])
    builder = _pointer(driver)
    builder.pointer_action.move_to_location(x, y)
    builder.perform()


def _shown_row(driver: Any) -> Callable[[int], None]:
    def wait(row: int) -> None:
        _wait(driver, f"return document.getElementById('bscan').dataset.row === '{row}'")

    return wait


def test_draw_save_follow_undo_reload(driver: Any, server: ReviewServer, dataset: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    _open(driver, server.url)
    case_dir = dataset / "cases" / BIG
    h, w, d = driver.execute_script(
        "return [window.enfaceReview.S.H, window.enfaceReview.S.W, window.enfaceReview.S.D]"
    )
    assert (h, w, d) == (49, 1024, 128)
    sh, sw, _ = driver.execute_script("return window.enfaceReview.S.info.spacing")
    shown = _shown_row(driver)

    # a brush stroke on the en-face view (200 µm brush), across rows 12 and 13
    en = _rect(driver, "enface")
    y = int(en["top"] + 12.7 / h * en["height"])
    xs = [int(en["left"] + f * en["width"]) for f in (0.15, 0.2, 0.26, 0.33, 0.4)]
    _stroke(driver, [(x, y) for x in xs])
    points = driver.execute_script("return window.enfaceReview.debug.lastStroke")
    grid = [_grid(p, en, h, w) for p in points]
    expected = np.zeros((h, w), np.uint8)
    for a, b in zip([grid[0], *grid[:-1]], grid):
        _capsule(expected, a, b, (sh, sw), 0.1)
    assert expected[12:14].sum() > 100 and expected[:10].sum() == 0

    # the crosshair: hovering a row of the lesion shows that B-scan; the arrow keys move it
    reference = read_mask(case_dir / "mask_ga.png")
    row = int(np.argmax(reference.sum(axis=1)))
    _hover_row(driver, en, row, h)
    shown(row)
    _actions(driver).send_keys(Keys.ARROW_DOWN).perform()
    shown(row + 1)
    _actions(driver).send_keys(Keys.ARROW_UP).send_keys(Keys.ARROW_UP).perform()
    shown(row - 1)
    _actions(driver).send_keys(Keys.ARROW_DOWN).perform()
    shown(row)

    # drawing along that B-scan: drag across A-scans from before the lesion to its middle
    lesion = np.flatnonzero(reference[row])
    bs = _rect(driver, "bscan")
    by = int(bs["top"] + 0.5 * bs["height"])
    bx0 = int(bs["left"] + (max(0, lesion[0] - 80) + 0.5) / w * bs["width"])
    bx1 = int(bs["left"] + (int(lesion.mean()) + 0.5) / w * bs["width"])
    _stroke(driver, [(bx0, by), ((bx0 + bx1) // 2, by), (bx1, by)])
    c0, c1 = (int(np.floor(_grid((x, by), bs, d, w)[0])) for x in (bx0, bx1))
    expected[row, c0 : c1 + 1] = 1
    assert driver.execute_script("return window.enfaceReview.debug.lastExtent") == {
        "row": row,
        "from": c0,
        "to": c1,
        "value": 1,
    }
    assert np.array_equal(_page_mask(driver, (h, w)), expected)

    driver.find_element("id", "save").click()
    _wait(driver, "return document.getElementById('status').textContent.startsWith('saved (')")
    on_disk = read_mask(case_dir / "mask_ga.g.png")
    assert on_disk.shape == (h, w) and np.array_equal(on_disk, expected), np.argwhere(on_disk != expected)[:10]
    assert not (case_dir / "mask_ga.png").read_bytes() == (case_dir / "mask_ga.g.png").read_bytes()
    log = [json.loads(line) for line in (dataset / "annotations.jsonl").read_text().splitlines()]
    assert log[-1]["pixels_changed"] == int(expected.sum()) and log[-1]["started_from"] == "empty"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _hover_row(driver, en, row, h, x_frac=(c0 + c1) / 2 / w)
    shown(row)
    driver.save_screenshot(str(ARTIFACTS / "review-case.png"))

    # another stroke, then undo: the page is back at the saved mask
    _stroke(driver, [(int(en["left"] + 0.5 * en["width"]), int(en["top"] + 0.8 * en["height"]))])
    assert not np.array_equal(_page_mask(driver, (h, w)), expected)
    _actions(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert np.array_equal(_page_mask(driver, (h, w)), expected)
    assert driver.find_element("id", "status").text == "saved"

    # B-scan redraws, timed by the page: rows far apart (not prefetched), then neighbours
    rows = [3, 41, 9, 35, 15, 45, 21, 6]
    for row in rows:
        _hover_row(driver, en, row, h)
        shown(row)
    for _ in range(4):
        _actions(driver).send_keys(Keys.ARROW_DOWN).perform()
        time.sleep(0.05)
    _wait(driver, "return window.enfaceReview.timings.bscan.length >= 10")
    timings = driver.execute_script("return window.enfaceReview.timings")
    timings["requests"] = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/'))"
        ".map(e => ({path: new URL(e.name).pathname, ms: e.responseEnd - e.requestStart}))"
    )

    driver.refresh()  # reload: the saved mask comes back
    _wait(
        driver,
        "return window.enfaceReview && window.enfaceReview.timings.firstView !== null && window.enfaceReview.S.info",
    )
    _wait(driver, "return window.enfaceReview && window.enfaceReview.S.version !== 'none'")
    assert np.array_equal(_page_mask(driver, (h, w)), expected)
    reload_timings = driver.execute_script("return window.enfaceReview.timings")
    _write_timings(timings, reload_timings)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors  # no script error on the page


def _request_kind(path: str) -> str:
    parts = path.strip("/").split("/")  # api, cases, <id>, bscan, <row>
    return parts[3] if len(parts) > 3 else "case info" if len(parts) == 3 else parts[-1]


def _write_timings(first: dict[str, Any], reload: dict[str, Any]) -> None:
    fresh = [t["ms"] for t in first["bscan"] if not t["cached"]]
    cached = [t["ms"] for t in first["bscan"] if t["cached"]]
    kinds: dict[str, list[float]] = {}
    for r in first["requests"]:
        kinds.setdefault(_request_kind(r["path"]), []).append(r["ms"])
    summary = {
        "case": "49 x 1024 x 128 spectralis phantom",
        "first_view_ms_from_navigation": first["firstView"],
        "case_open_ms": first["caseOpen"][0]["ms"],
        "reload_first_view_ms": reload["firstView"],
        "bscan_fetched_ms": {"n": len(fresh), "median": statistics.median(fresh) if fresh else None, "max": max(fresh)}
        if fresh
        else None,
        "bscan_cached_ms": {"n": len(cached), "median": statistics.median(cached), "max": max(cached)}
        if cached
        else None,
        "api_request_ms": {k: {"n": len(v), "median": statistics.median(v)} for k, v in sorted(kinds.items())},
        "raw": first["bscan"],
    }
    (ARTIFACTS / "review-timings.json").write_text(json.dumps(summary, indent=2) + "\n")
    assert fresh and all(t > 0 for t in fresh)
    assert first["firstView"] > 0


def test_the_browser_without_token_is_refused(driver: Any, server: ReviewServer) -> None:
    base = server.url.split("/?token=")[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/", timeout=10)
    assert e.value.code == 401
    _open(driver, server.url)
    status = driver.execute_script(
        "return fetch('/api/cases', {credentials: 'include'}).then(r => r.status)"
    )  # whatever the browser holds, without the header
    assert status == 401
    forged = driver.execute_script(
        "return fetch('/api/cases/P0001_OD_V1/mask', {method: 'PUT', credentials: 'include',"
        " headers: {'Content-Type': 'application/octet-stream', 'X-Base-Version': 'none'},"
        " body: new Uint8Array(49 * 1024)}).then(r => r.status)"
    )
    assert forged == 401


def test_the_token_never_reaches_a_cookie_or_another_local_server(
    driver: Any, server: ReviewServer, other_server: tuple[int, list[dict[str, str]]]
) -> None:
    port, seen = other_server
    driver.get_log("performance")  # what came before
    _open(driver, server.url)
    _wait(driver, "return window.enfaceReview.S.bscans.size > 1")
    headers = _response_headers(driver)
    assert sum(h.get("x-content-type-options") == "nosniff" for h in headers) >= 6  # the page's responses are there
    assert [h["set-cookie"] for h in headers if "set-cookie" in h] == []
    assert [c for c in driver.get_cookies() if server.token in c["value"] or "enface" in c["name"]] == []

    driver.get(f"http://127.0.0.1:{port}/")  # another server on this machine, as a notebook would be
    _wait(driver, "return document.title === 'another local server'")
    assert seen and seen[0]["path"] == "/"
    leaked = [r for r in seen if server.token in json.dumps(r) or "enface" in r.get("cookie", "")]
    assert leaked == [], leaked

    _open(driver, server.url)  # the export works without a cookie: a download through fetch, with the header
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "deny"})
    driver.execute_script(
        "window.exported = null; const make = URL.createObjectURL;"
        "URL.createObjectURL = (blob) => { blob.text().then(t => { window.exported = t; }); return make(blob); };"
    )
    driver.find_element("id", "export").click()
    assert _wait(driver, "return window.exported").startswith("case_id,grader,task,decision,")
