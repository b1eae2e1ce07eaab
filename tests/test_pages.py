"""Result pages, checked in a real headless Chromium (the system's `chromium` and `chromium-driver`).

The demo trace and an audio-time sweep of the bundled demo model: the page loads
from file:// without console errors, hovering a cell shows the JSON result's
values, clicking a time window plays exactly that window, screenshots are sane;
a 32-layer x 1,500-position map renders in under 2 s; the demo page stays under 2 MB.
"""

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lalm_lens.tracing.results import TokenTrace, TraceResult

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--window-size=1300,1000")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
        pytest.skip("no browser installed: the page tests need Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="lalm-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_pages(tmp_path_factory):
    """The demo model's token trace and audio-time sweep, saved as JSON, with their pages and clip."""
    from lalm_lens import HookedLALM
    from lalm_lens.demo import demo_example
    from lalm_lens.tracing import audio_time_trace, causal_trace

    out = tmp_path_factory.mktemp("pages")
    model = HookedLALM.from_pretrained("demo", device="cpu")
    clip, prompt, answer, options, prefix = demo_example(out / "demo_clip.wav", seed=0)
    inp = model.prepare(clip, prompt, answer_prefix=prefix, options=options)
    tokens = causal_trace(model, inp, answer=answer, mode="tokens")
    sweep = audio_time_trace(model, inp, answer=answer, window_seconds=0.5)
    for name, result in (("tokens", tokens), ("audio_time", sweep)):
        result.save(out / f"trace_{name}.json")
        result.to_html(out / f"trace_{name}.html", audio=clip)
    return out


def open_page(driver, path: Path) -> list[dict]:
    """Load `path` from file:// and wait until every figure is drawn; the console messages of the load."""
    driver.get_log("browser")  # drop earlier pages' messages
    driver.get(path.resolve().as_uri())
    deadline = time.time() + 30
    while not driver.execute_script("return document.body.dataset.rendered === '1'"):
        assert time.time() < deadline, f"{path.name} never finished drawing"
        time.sleep(0.05)
    return driver.get_log("browser")


def errors(log: list[dict]) -> list[dict]:
    return [entry for entry in log if entry["level"] in ("SEVERE", "WARNING")]


def hover(driver, fig_id: str, x, y) -> dict[str, str]:
    """Move the mouse over data point (x, y) of a figure (a category axis takes the category's index);
    return the tooltip's fields."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    px, py, w, h = driver.execute_script(
        "const gd = document.getElementById(arguments[0]), L = gd._fullLayout;"
        "const px = L.xaxis.l2p(arguments[1]) + L._size.l, py = L.yaxis.l2p(arguments[2]) + L._size.t;"
        "window.scrollBy(0, gd.getBoundingClientRect().top + py - window.innerHeight / 2);"
        "const r = gd.getBoundingClientRect(); return [px, py, r.width, r.height];",
        fig_id, x, y)
    gd = driver.find_element(By.ID, fig_id)
    ActionChains(driver).move_to_element_with_offset(gd, int(px - w / 2), int(py - h / 2)).perform()
    deadline = time.time() + 5
    while not driver.execute_script("return document.getElementById('lalm-tip').style.display === 'block'"):
        assert time.time() < deadline, "no tooltip appeared"
        time.sleep(0.05)
    spans = driver.find_elements(By.CSS_SELECTOR, "#lalm-tip span")
    return {s.get_attribute("data-key"): s.text for s in spans}


def screenshot_ok(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 800 and image.size[1] >= 600
        colours = len(set(image.convert("RGB").resize((200, 150)).getdata()))
    assert path.stat().st_size > 20_000 and colours > 50, "the screenshot is blank"


def test_demo_token_page_loads_and_hovering_a_cell_shows_the_json_value(browser, demo_pages):
    log = open_page(browser, demo_pages / "trace_tokens.html")
    assert not errors(log), log
    data = json.loads((demo_pages / "trace_tokens.json").read_text())
    recovery = np.array(data["recovery"], dtype=float)
    a, j = np.unravel_index(np.nanargmax(recovery), recovery.shape)  # the best cell: the final position
    row = browser.execute_script("return mapRows().indexOf(arguments[0])", int(j))
    tip = hover(browser, "lalm-map", data["layers"][a], row)
    position = data["positions"][j]
    assert tip["index"] == str(position) and tip["layer"] == str(data["layers"][a])
    assert json.loads(tip["token"]) == data["str_tokens"][position] and tip["group"] == data["groups"][str(position)]
    assert float(tip["RR"]) == data["recovery"][a][j] and float(tip["P_patched"]) == data["patched"][a][j]
    screenshot_ok(browser, demo_pages / "trace_tokens.png")


def test_demo_page_with_its_clip_stays_under_2_mb(demo_pages):
    page = demo_pages / "trace_tokens.html"
    beside = [p for p in demo_pages.iterdir() if p.suffix == ".wav" and p.stem == page.stem]
    size = page.stat().st_size + sum(p.stat().st_size for p in beside)
    assert "data:audio/wav;base64," in page.read_text() or beside, "the page carries no clip"
    assert size < 2 * 2**20, f"{size} bytes"
    assert (demo_pages / "plotly.min.js").stat().st_size > 1_000_000  # the shared bundle, written once beside


def test_audio_time_page_hover_and_click_plays_that_window(browser, demo_pages):
    log = open_page(browser, demo_pages / "trace_audio_time.html")
    assert not errors(log), log
    data = json.loads((demo_pages / "trace_audio_time.json").read_text())
    a, w = 1, 2
    start, end = data["windows"][w]
    tip = hover(browser, "lalm-time", (start + end) / 2, data["layers"][a])
    assert float(tip["RR"]) == data["recovery"][a][w] and float(tip["P_patched"]) == data["patched"][a][w]
    assert [float(v) for v in tip["window"].removesuffix(" s").split("–")] == [start, end] and tip["group"] == "audio"
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).click().perform()  # the mouse is over that cell
    state = lambda: browser.execute_script(  # noqa: E731
        "const a = document.getElementById('lalm-audio'), r = a.played;"
        "return [a.currentTime, a.paused, a.dataset.windowStart, a.dataset.windowEnd, a.dataset.playError || null,"
        " Array.from({length: r.length}, (_, i) => [r.start(i), r.end(i)])]")
    deadline = time.time() + 10 * (end - start) + 10
    while True:  # until the window has played and stopped
        t, paused, w0, w1, error, played = state()
        assert error is None, error
        if paused and played:
            break
        assert time.time() < deadline, f"the window never stopped (at {t} s, played {played})"
        time.sleep(0.03)
    assert float(w0) == start and float(w1) == end
    assert abs(t - end) < 1e-6, f"stopped at {t}, not at the window's end {end}"
    print(f"window {start}–{end} s: the browser played {played}")
    # what the browser played: that window alone (a timer stops it; on a machine loaded many times over its
    # cores the renderer's timers can run late, hence the allowance past the end)
    assert len(played) == 1 and abs(played[0][0] - start) < 0.05 and -0.01 < played[0][1] - end < 0.25, played
    screenshot_ok(browser, demo_pages / "trace_audio_time.png")


def long_map(layers: int = 32, text: int = 20, audio: int = 1480, seed: int = 0) -> TokenTrace:
    """A 32-layer x 1,500-position token map (a 30 s clip's worth of audio positions)."""
    rng = np.random.default_rng(seed)
    n = text + audio
    groups = {p: "audio" if 5 <= p < 5 + audio else "early_prompt" for p in range(n)}
    groups[n - 1] = "final"
    return TokenTrace(clean=0.9, corrupted=0.1, patched=torch.tensor(rng.uniform(0.1, 0.9, (layers, n))),
                      layers=list(range(layers)), positions=list(range(n)), token_labels=[f"t{p}" for p in range(n)],
                      groups=groups, states="resid_post", answer="x", answer_token=1,
                      str_tokens=[f"t{p}" for p in range(n)],
                      settings=dict(audio_seconds=[0.0, (audio - 1) * 0.02], duration=audio * 0.02))


def test_a_32_layer_by_1500_position_map_renders_under_2_s_and_expands_its_audio_span(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    result = long_map()
    wave = (0.1 * np.sin(np.arange(16000 * 30) * 0.05)).astype(np.float32)
    page = result.to_html(tmp_path / "long.html", audio=(wave, 16000))
    log = open_page(browser, page)
    assert not errors(log), log
    render_ms = float(browser.execute_script("return document.body.dataset.renderMs"))
    print(f"32 x 1,500 map: drawn in {render_ms:.0f} ms (per figure: "
          f"{browser.execute_script('return document.body.dataset.figureMs')}); page {page.stat().st_size} bytes")
    assert render_ms < 2000, f"the map took {render_ms:.0f} ms to draw"
    assert browser.execute_script("return mapRows().length") == 21  # 20 text rows + the collapsed audio span
    hover(browser, "lalm-map", 3, 5)  # the collapsed span's row
    ActionChains(browser).click().perform()  # expands it
    assert browser.execute_script("return mapRows().length") == 1500
    t0 = time.time()
    browser.execute_script("return null")
    assert time.time() - t0 < 2
    p = 700  # an audio row: its label stays readable and clicking it plays its 20 ms
    browser.execute_script("const gd = document.getElementById('lalm-map');"
                           "return Plotly.relayout(gd, {'yaxis.range': [arguments[0] + 20, arguments[0] - 20]})", p)
    tip = hover(browser, "lalm-map", 10, p)
    assert tip["index"] == str(p) and tip["group"] == "audio"
    assert float(tip["RR"]) == float(result.recovery[10, p])
    ActionChains(browser).click().perform()
    start = float(browser.execute_script("return document.getElementById('lalm-audio').dataset.windowStart"))
    assert start == pytest.approx((p - 5) * 0.02)
    screenshot_ok(browser, tmp_path / "long.png")


def test_pages_refuse_bad_paths_and_audio(tmp_path):
    result = long_map(layers=2, text=3, audio=4)
    with pytest.raises(ValueError, match="written as .html"):
        result.to_html(tmp_path / "page.png")
    with pytest.raises(ValueError, match="audio=.*no such file"):
        result.to_html(tmp_path / "page.html", audio=tmp_path / "missing.wav")
    from lalm_lens.pages import write_page

    with pytest.raises(ValueError, match="no page for results of kind 'dict'"):
        write_page({}, tmp_path / "page.html")


def other_results():
    """One small result of every other kind, built directly (their numbers are what the pages must show)."""
    from lalm_lens.tracing.dataset_result import DatasetResult
    from lalm_lens.tracing.knockout import KnockoutResult
    from lalm_lens.tracing.lens import LensResult
    from lalm_lens.tracing.results import LayerTrace
    from lalm_lens.tracing.sweeps import HeadTrace

    rng = np.random.default_rng(1)
    common = dict(clean=0.8, corrupted=0.1, states="resid_post", answer="low", answer_token=22,
                  groups={0: "template", 1: "audio", 2: "audio", 3: "early_prompt", 4: "final"},
                  str_tokens=["<s>", "a1", "a2", "pitch", "is"])
    layers = LayerTrace(patched=torch.tensor(rng.uniform(0.1, 0.8, 4)), layers=[0, 1, 2, 3], positions=[0, 3, 4],
                        token_labels=["<s>", "pitch", "is"], **common)
    heads = HeadTrace(patched=torch.tensor(rng.uniform(0.1, 0.8, (4, 2))), layers=[0, 1, 2, 3], positions=[4],
                      token_labels=["4"], attention_clean=rng.uniform(0, 1, (4, 2)).tolist(),
                      attention_corrupted=rng.uniform(0, 1, (4, 2)).tolist(), **common)
    lens = LensResult(layers=[0, 1], answer="low", answer_token=22, metric={"name": "answer_prob"}, clean=[0.1, 0.9],
                      corrupted=[0.1, 0.2], clean_top=[[["low", 0.1, 22]], [["low", 0.9, 22]]],
                      corrupted_top=[[["high", 0.5, 21]], [["high", 0.6, 21]]], audio_positions=[1, 2],
                      audio_seconds=[0.0, 0.04], audio_rank=[[3, 1], [0, 0]])
    knockout = KnockoutResult(p_clean=0.8, p_knocked=torch.tensor([0.2, 0.7], dtype=torch.float64), layers=[0, 1],
                              window=2, query_positions=[4], key_positions=[1, 2], answer="low", answer_token=22,
                              settings=dict(queries="final", keys="audio"))
    records = [dict(status="ok", recovery=rng.uniform(0, 1, 4).tolist()) for _ in range(6)]
    dataset = DatasetResult(records=records + [dict(status="error")], mode="layers", layers=[0, 1, 2, 3],
                            settings=dict(model="demo"))
    group_records = [dict(status="ok", group_recovery={g: rng.uniform(0, 1, 4).tolist() for g in ("object", "final")})
                     for _ in range(5)]
    groups = DatasetResult(records=group_records, mode="tokens", layers=[0, 1, 2, 3])
    return dict(layers=layers, heads=heads, lens=lens, knockout=knockout, dataset=dataset, groups=groups)


def test_every_result_kind_has_a_page_and_report_links_a_folder_of_them(browser, tmp_path):
    from lalm_lens.cli import main

    results = other_results()
    wave = (0.1 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    for name, result in results.items():  # to_html for every kind
        assert result.to_html(tmp_path / "direct" / f"{name}.html", audio=(wave, 16000)).is_file()
    out = tmp_path / "out"  # a folder of saved results, as the commands and a study leave it
    results["layers"].save(out / "trace_layers.json")
    results["heads"].save(out / "trace_heads.json")
    results["lens"].save(out / "lens.json")
    (out / "dataset").mkdir()
    results["dataset"].save(out / "dataset" / "summary.json")
    study = {"demo / set / silence / layers": results["dataset"].to_json(),
             "demo / set / silence / tokens": results["groups"].to_json()}
    (out / "study").mkdir()
    (out / "study" / "summary.json").write_text(json.dumps(study))
    (out / "trace_summary.json").write_text(json.dumps({"traces": {}}))  # not a result: no page
    assert main(["report", str(out)]) == 0
    index = (out / "index.html").read_text()
    links = re.findall(r'href="([^"]+\.html)"', index)
    assert sorted(links) == ["dataset/summary.html", "lens.html", "study/summary.html", "trace_heads.html",
                             "trace_layers.html"]
    assert not (out / "dataset" / "plotly.min.js").exists()  # one shared bundle for the report
    study_html = (out / "study" / "summary.html").read_text()  # the study's tables: one column per token group
    assert "<th>object</th><th>final</th>" in study_html and "<td>6 / 7</td>" in study_html
    curve = json.loads((out / "dataset" / "summary.json").read_text())["mean_recovery"]
    for page in [out / link for link in links] + [tmp_path / "direct" / f"{k}.html" for k in ("knockout", "groups")]:
        log = open_page(browser, page)
        assert not errors(log), (page, log)
        if page.name == "summary.html" and page.parent.name == "dataset":  # a dataset page: the CI under the mouse
            tip = hover(browser, "lalm-curves", 2, curve["mean"][2])
            assert float(tip["mean RR"]) == curve["mean"][2] and tip["layer"] == "2"
            assert [float(v) for v in tip["95% CI"].split(" to ")] == [curve["ci_low"][2], curve["ci_high"][2]]
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_a_page_works_from_a_static_server_too(browser, demo_pages):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo_pages))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get_log("browser")
        browser.get(f"http://127.0.0.1:{server.server_port}/trace_audio_time.html")
        deadline = time.time() + 30
        while not browser.execute_script("return document.body.dataset.rendered === '1' && "
                                          "document.getElementById('lalm-audio').readyState >= 1"):
            assert time.time() < deadline, "the page or its clip never loaded from the server"
            time.sleep(0.05)
        assert not errors(browser.get_log("browser"))
        duration = browser.execute_script("return document.getElementById('lalm-audio').duration")
        assert duration == pytest.approx(json.loads((demo_pages / "trace_audio_time.json").read_text())
                                         ["settings"]["duration"], abs=0.01)
    finally:
        server.shutdown()
