"""Seeing and hearing an SAE feature: activation over time, top windows, WAV clips, pages, the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch

from lalm_lens.features import SAE, SAEConfig, save_saelens, save_sparsify
from lalm_lens.features.views import (FeatureActivation, TopWindows, feature_activation, feature_means, top_windows,
                                      write_clips)

HOOKS = ["blocks.1.hook_resid_post", "hook_audio_embeds"]


@pytest.fixture(scope="module")
def demo():
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    from lalm_lens.demo import write_demo_dataset
    from lalm_lens.tracing.dataset import read_items

    return read_items(write_demo_dataset(tmp_path_factory.mktemp("fv_items"), n=3, seed=7))


def _sae(hook, seed=1, **kw):
    return SAE.random(SAEConfig(64, 24, hook_name=hook, **kw), seed=seed)


def _inp(model, item):
    return model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)


@pytest.mark.parametrize("hook", HOOKS)
def test_activation_is_the_cached_feature_with_token_times(demo, items, hook):
    sae, inp = _sae(hook), _inp(demo, items[0])
    name = f"{hook}.hook_sae_acts_post"
    with demo.saes([sae]):
        _, cache = demo.run_with_cache(inp, names_filter=[name])
        _, full = demo.run_with_cache(inp)  # caching every hook takes another attention path: ~1e-5 apart
        act = feature_activation(demo, sae, inp, 5, item=items[0].id)
    want = cache[name][..., 5]
    assert (full[name][..., 5] - want).abs().max() <= 1e-4
    audio = inp.audio_positions[0].tolist()
    seconds = inp.meta["audio_seconds"][0].tolist()
    if hook == "hook_audio_embeds":  # the first axis is the audio tokens
        assert act.positions == audio and torch.equal(torch.tensor(act.values), want[: len(audio)])
    else:
        assert act.positions == list(range(inp.input_ids.shape[1]))
        assert torch.equal(torch.tensor(act.values), want[0])
    assert (torch.tensor(act.values) > 0).any()
    times = dict(zip(act.positions, act.times))
    assert [times[p] for p in audio] == seconds
    assert all(t is None for p, t in times.items() if p not in audio)
    assert act.step == pytest.approx(seconds[1] - seconds[0])
    assert act.tokens[0] == inp.str_tokens[0][act.positions[0]]
    assert not demo.__dict__.get("_spliced")  # spliced for the call only, removed after
    assert "feature 5 at" in act.summary() and len(act.to_dataframe()) == len(act.positions)


def _brute(demo, sae, items, feature, ws):
    """Every (item, window start, max) by a plain loop over the cached activations; each item's token times."""
    rows, times = [], {}
    with demo.saes([sae]):
        for item in items:
            inp = _inp(demo, item)
            name = f"{sae.cfg.hook_name}.hook_sae_acts_post"
            _, cache = demo.run_with_cache(inp, names_filter=[name])
            acts = cache[name]
            audio = inp.audio_positions[0].tolist()
            vals = acts[: len(audio), feature] if acts.ndim == 2 else acts[0, audio, feature]
            seconds = inp.meta["audio_seconds"][0].tolist()
            times[item.id] = (dict(zip(audio, seconds)), len(inp.waveform) / inp.sampling_rate)
            best = {}
            for v, t in zip(vals.tolist(), seconds):
                w = int(t // ws)
                best[w] = max(best.get(w, -np.inf), v)
            rows += [(item.id, w * ws, v) for w, v in best.items()]
    return sorted(rows, key=lambda r: -r[2]), times


@pytest.mark.parametrize("hook", HOOKS)
def test_top_windows_equal_a_brute_force_scan(demo, items, hook, tmp_path):
    sae = _sae(hook, seed=2)
    top = top_windows(demo, sae, items[:2], 3, window_seconds=0.4, k=100)
    brute, times = _brute(demo, sae, items[:2], 3, 0.4)
    assert top.n_windows == len(brute) == len(top.windows) and top.n_items == 2
    got = [w["activation"] for w in top.windows]
    assert got == sorted(got, reverse=True)
    assert sorted((w["item"], round(w["start"], 6), w["activation"]) for w in top.windows) == \
        sorted((i, round(s, 6), v) for i, s, v in brute)
    for w in top.windows:  # the window holds the position of its max, by that token's start time
        start, duration = times[w["item"]]
        assert w["start"] <= start[w["position"]] < w["end"] <= duration + 1e-9

    paths = write_clips(replace(top, windows=top.windows[:4]), tmp_path / "clips")
    assert len(paths) == 4
    for path, w in zip(paths, top.windows):
        wave, rate = soundfile.read(path)
        full, rate0 = soundfile.read(w["audio"])
        a, b = round(w["start"] * rate0), round(w["end"] * rate0)
        assert rate == rate0 and len(wave) == b - a and np.allclose(wave, full[a:b], atol=1e-4)


def test_json_round_trip_plot_and_pages(demo, items, tmp_path):
    sae, inp = _sae(HOOKS[0]), _inp(demo, items[1])
    act = feature_activation(demo, sae, inp, 7)
    top = top_windows(demo, sae, items[:1], 7, k=3)
    for result, cls in ((act, FeatureActivation), (top, TopWindows)):
        back = cls.load(result.save(tmp_path / f"{result.kind}.json"))
        assert back == result
    with pytest.raises(ValueError, match="is not a feature_windows"):
        TopWindows.load(tmp_path / "feature_activation.json")
    ax = act.plot()
    assert len(ax.figure.axes) == 3 and ax.get_xlim() == pytest.approx((0, act.duration))
    page = act.to_html(tmp_path / "act.html", audio=items[1].audio).read_text()
    assert 'id="lalm-audio"' in page and "lalm-feature-time" in page and "LL.playWindow(F.times[j]" in page
    data = json.loads(page.split('<script id="lalm-data" type="application/json">')[1].split("</script>")[0])
    assert data["feature"]["values"] == act.values
    page = top.to_html(tmp_path / "top.html").read_text()
    assert page.count('class="lalm-window"') == 3 and "LL.playWindow(0, w.end - w.start)" in page
    data = json.loads(page.split('<script id="lalm-data" type="application/json">')[1].split("</script>")[0])
    assert all(w["clip"].startswith("data:audio/wav;base64,") for w in data["windows"])


def test_bad_input_is_refused(demo, items):
    sae, inp = _sae(HOOKS[0]), _inp(demo, items[0])
    for feature in (24, -1, 2.0):
        with pytest.raises(ValueError, match="features 0..23"):
            feature_activation(demo, sae, inp, feature)
    for ws in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="window_seconds must be a positive"):
            top_windows(demo, sae, items, 1, window_seconds=ws)
    with pytest.raises(ValueError, match="k must be a positive"):
        top_windows(demo, sae, items, 1, k=0)
    with pytest.raises(ValueError, match="items is empty"):
        top_windows(demo, sae, [], 1)
    enc = _sae("audio_encoder.blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="no prompt position"):
        feature_activation(demo, enc, inp, 1)


def test_cli_writes_each_top_feature(demo, items, tmp_path, capsys):
    from lalm_lens.cli import main

    sae = _sae(HOOKS[0], activation="topk", k=6)
    folder = save_sparsify(sae, tmp_path / HOOKS[0])
    item_file = str(items[0].audio).rsplit("/audio/", 1)[0] + "/items.jsonl"
    out = tmp_path / "out"
    assert main(["features", "--model", "demo", "--sae", str(folder), "--items", item_file, "--top", "2",
                 "-n", "2", "-k", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "features.json").read_text())
    with demo.saes([sae]):
        means = feature_means(demo, sae, items[:2])
    assert summary["features"] == means.topk(2).indices.tolist()
    for f in summary["features"]:
        d = out / f"feature_{f}"
        for name in ("top_windows.json", "activation.json", "activation.png", "activation.html", "top_windows.html"):
            assert (d / name).is_file(), name
        top = TopWindows.load(d / "top_windows.json")
        assert len(list((d / "clips").glob("*.wav"))) == len(top.windows) == 3
        assert FeatureActivation.load(d / "activation.json").item == top.windows[0]["item"]
    save_saelens(_sae(HOOKS[0]), tmp_path / "saelens")
    assert main(["features", "--model", "demo", "--sae", str(tmp_path / "saelens"), "--items", item_file,
                 "--feature", "4", "-n", "1", "--no-html", "--out", str(tmp_path / "out2")]) == 0
    assert not (tmp_path / "out2" / "feature_4" / "activation.html").exists()
    capsys.readouterr()
    for argv, message in ((["--sae", str(tmp_path / "missing")], "--sae .*no such folder"),
                          (["--sae", str(folder), "--window-seconds", "0"], "--window-seconds must be a positive"),
                          (["--sae", str(folder), "--feature", "99"], "--feature .*features 0..23")):
        assert main(["features", "--model", "demo", "--items", item_file, *argv]) == 2
        assert __import__("re").search(message, capsys.readouterr().err)


def test_pages_in_a_browser_hover_shows_the_value_and_clicks_play_the_window(demo, items, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from tests.test_pages import CHROMIUM, DRIVER, FLAGS, errors, hover, open_page

    browser = _browser(CHROMIUM, DRIVER, FLAGS)
    try:
        sae = _sae(HOOKS[0], seed=3)
        act = feature_activation(demo, sae, _inp(demo, items[0]), 2, item=items[0].id)
        assert not errors(open_page(browser, act.to_html(tmp_path / "act.html", audio=items[0].audio)))
        j = max(act.audio(), key=lambda j: act.values[j])
        tip = hover(browser, "lalm-feature-time", act.times[j] + act.step / 2, act.values[j] / 2)
        assert float(tip["activation"]) == act.values[j] and tip["group"] == "audio"
        ActionChains(browser).click().perform()
        assert _played(browser, 10) == pytest.approx([act.times[j], act.times[j] + act.step])

        top = top_windows(demo, sae, items[:2], 2, window_seconds=0.3, k=3)
        assert not errors(open_page(browser, top.to_html(tmp_path / "top.html")))
        browser.find_elements(By.CSS_SELECTOR, "tr.lalm-window")[1].click()
        w = top.windows[1]
        assert _played(browser, 10) == pytest.approx([0, w["end"] - w["start"]])
    finally:
        browser.quit()


def _browser(chromium, driver, flags):
    import tempfile
    from pathlib import Path

    if not (Path(chromium).is_file() and Path(driver).is_file()):
        pytest.skip("no browser installed: apt-get install -y chromium chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in flags + (f"--user-data-dir={tempfile.mkdtemp(prefix='lalm-chromium-')}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _played(browser, timeout):
    """Wait until the page's player has played a window and stopped; the window `[start, end]` it was asked."""
    import time

    deadline = time.time() + timeout
    while True:
        paused, played, error, w0, w1, t = browser.execute_script(
            "const a = document.getElementById('lalm-audio');"
            "return [a.paused, a.played.length, a.dataset.playError || null, a.dataset.windowStart, "
            "a.dataset.windowEnd, a.currentTime]")
        assert error is None, error
        if paused and played:
            assert abs(t - float(w1)) < 1e-3, f"stopped at {t} s, not at the window's end {w1}"
            return [float(w0), float(w1)]
        assert time.time() < deadline, "the window never played to its end"
        time.sleep(0.03)


def test_a_real_family_qwen2_audio(qwen2_audio, clip):
    """The tiny Qwen2-Audio checkpoint: the LM hook's feature equals the cache, its audio tokens carry their times."""
    model, hook = qwen2_audio, "blocks.0.hook_resid_post"
    sae = SAE.random(SAEConfig(model.cfg.d_model, 16, hook_name=hook), seed=4)
    inp = model.prepare(clip, "What is it?", sampling_rate=16000)
    name = f"{hook}.hook_sae_acts_post"
    with model.saes([sae]):
        _, cache = model.run_with_cache(inp, names_filter=[name])
    act = feature_activation(model, sae, inp, 9)
    assert torch.equal(torch.tensor(act.values), cache[name][0, :, 9])
    audio = inp.audio_positions[0].tolist()
    assert [act.times[p] for p in audio] == inp.meta["audio_seconds"][0].tolist() and len(audio) > 1
