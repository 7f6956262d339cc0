"""The dock screen in real headless Chromium, fed by a stand-in of the local API that follows the status
model's contract (tests/browser/status_api.py): every state and error class in words and with the
officer's instruction, in Chinese and English, live over server-sent events, text that fits its tile at
kiosk sizes, the language switch remembered, device text shown as text, and the LED legend."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from edge.observe.sink import BayPhase, ErrorClass
from edge.sources.usb.bay_leds import STATE_LEDS
from tests.browser.conftest import LiveServer, screenshot
from tests.browser.status_api import StatusApi, bay

KIOSK_SIZES = [(1920, 1080), (1280, 800)]
EXPECT_MS = 10_000

# Worst cases of what a bay shows: long names (a Uyghur name in Chinese transliteration), long models
# and serials, four-digit file counts, hours left.
LONG_OFFICER = {"name": "买买提·艾力江·阿不都热合曼", "badge": "6501040123456"}
LONG_DEVICE = {"serial": "HIK2026120500000012345", "model": "DS-MH2311-PRO/32G", "battery_pct": 100}


def _busy_bays() -> list[dict[str, Any]]:
    occupied = {"officer": LONG_OFFICER, "device": LONG_DEVICE}
    return [
        bay(1, "copying", files_done=1234, files_total=9999, bytes_done=123_456_789_012,
            bytes_total=987_654_321_098, speed_bps=987_654_321, eta_s=35_999, **occupied),
        bay(2, "verifying", files_done=9999, files_total=9999, bytes_done=5, bytes_total=5, **occupied),
        bay(3, "awaiting_receipt", files_done=12, files_total=12, **occupied),
        bay(4, "error", error_class="files_failed", files_done=11, files_total=12, **occupied),
        bay(5, "error", error_class="disk_full", **occupied),
        bay(6, "error", error_class="wrong_password", **occupied),
        bay(7, "error", error_class="no_volume", **occupied),
        bay(8, "empty"),
    ]


def _open(page: Page, api: StatusApi, width: int = 1280, height: int = 800) -> None:
    page.set_viewport_size({"width": width, "height": height})
    page.goto(api.url + "/dock")
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=EXPECT_MS)


def shot(page: Page, name: str) -> None:
    """A screenshot once the progress bars have finished sliding (the LEDs blink forever)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.fill')].every((f) => f.getAnimations().length === 0)"
    )
    screenshot(page, name)


def _tile(page: Page, number: int) -> Any:
    return page.locator(f'.bay[data-bay="{number}"]')


# (error class, Chinese phrase, English phrase) that the instruction must contain: what the officer does.
INSTRUCTIONS = [
    ("not_allowed", "请将执法记录仪交给管理员", "Hand the recorder to the administrator"),
    ("wrong_password", "交给管理员", "Hand the recorder to the administrator"),
    ("disk_full", "通知管理员", "tell the administrator"),
    ("rooms_recording", "录制结束后请重新插入", "Dock it again once they stop"),
    ("pulled_early", "请将执法记录仪放回原位", "Put the recorder back in its bay"),
    ("files_failed", "其余文件已安全保存", "The rest are safe"),
    ("no_password", "交给管理员", "Hand the recorder to the administrator"),
    ("no_identity", "交给管理员", "Hand the recorder to the administrator"),
    ("no_volume", "重新插入", "Dock it again"),
    ("device_error", "交给管理员", "Hand the recorder to the administrator"),
    ("failed", "交给管理员", "Hand the recorder to the administrator"),
]
HEADINGS = {
    "not_allowed": ("未登记的记录仪", "Recorder not registered"),
    "wrong_password": ("密码错误", "Wrong password"),
    "disk_full": ("采集站存储已满", "Station storage full"),
    "rooms_recording": ("存储空间留给正在录制的讯问室", "Space kept for the rooms recording"),
    "pulled_early": ("拔出过早", "Removed too early"),
    "files_failed": ("部分文件失败", "Some files failed"),
}


def test_every_error_shows_its_words_and_what_to_do_in_both_languages(
    page: Page, live_server: LiveServer
) -> None:
    bays = [bay(n, "error", error_class=c) for n, (c, _, _) in enumerate(INSTRUCTIONS, start=1)]
    api = StatusApi(live_server, bays)
    _open(page, api, 1920, 1080)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    for language, column in (("zh", 1), ("en", 2)):
        for number, row in enumerate(INSTRUCTIONS, start=1):
            error_class, phrase = row[0], row[column]
            tile = _tile(page, number)
            expect(tile.locator(".instruction")).to_contain_text(phrase)
            assert tile.get_attribute("data-state") == "error"
            if error_class in HEADINGS:
                expect(tile.locator(".state")).to_have_text(HEADINGS[error_class][column - 1])
        shot(page, f"dock-errors-{language}")
        if language == "zh":
            page.locator("#language").click()
    assert page.evaluate("document.documentElement.lang") == "en"
    # A class the page does not know yet (a newer station) still says what to do.
    api.set_bay(bay(1, "error", error_class="some_future_class"))
    expect(_tile(page, 1).locator(".instruction")).to_have_text("Hand the recorder to the administrator")


def test_a_bouncing_bay_says_so_in_words_in_both_languages_and_fits(
    page: Page, live_server: LiveServer
) -> None:
    busy = _busy_bays()
    busy[0]["bouncing"] = True  # a copying bay with every line filled, at the smaller kiosk size
    api = StatusApi(live_server, [*busy, bay(9, "empty", bouncing=True)])
    _open(page, api, 1280, 800)
    for language, phrase in (("zh", "本托架插拔信号异常，请通知管理员检查"),
                             ("en", "This bay's sensor keeps flickering: tell the administrator")):
        for number in (1, 9):
            expect(_tile(page, number).locator(".bouncing")).to_have_text(phrase)
            expect(_tile(page, number).locator(".bouncing")).to_be_visible()
        # The dot shows what the bay shows: its own BOUNCING pattern (amber, triple flash) on the empty
        # one, a docking's own on the busy one.
        expect(_tile(page, 9).locator(".led")).to_have_attribute("data-led", "BOUNCING")
        expect(_tile(page, 9)).to_have_attribute("data-colour", "amber")
        expect(_tile(page, 1).locator(".led")).to_have_attribute("data-led", "COPYING")
        expect(_tile(page, 1).locator(".state")).to_have_text(("正在采集", "Copying")[language == "en"])
        found = page.evaluate(OVERFLOW_JS)
        assert (found["wide"], found["tall"], found["page"]) == ([], [], [False, False]), (language, found)
        shot(page, f"dock-bouncing-{language}")
        page.locator("#language").click()
    # Control: the flag going down takes the words away (and a bay never flagged has none).
    api.set_bay(bay(9, "empty", bouncing=False))
    expect(_tile(page, 9).locator(".bouncing")).to_be_hidden()
    expect(_tile(page, 9).locator(".bouncing")).to_have_text("")
    expect(_tile(page, 9).locator(".led")).to_have_attribute("data-led", "IDLE")
    expect(_tile(page, 2).locator(".bouncing")).to_be_hidden()


def test_a_usb_serial_shared_or_missing_is_a_warning_in_words_in_both_languages_and_fits(
    page: Page, live_server: LiveServer
) -> None:
    busy = _busy_bays()
    # Two recorders claiming one USB serial, both copying with every line filled; one with none at all.
    busy[0]["usb_serial_warning"] = {"problem": "shared", "bays": [2]}
    busy[1]["usb_serial_warning"] = {"problem": "shared", "bays": [1]}
    busy[1]["bouncing"] = True  # both warnings on one tile, at the smaller kiosk size
    busy[5]["usb_serial_warning"] = {"problem": "missing"}
    api = StatusApi(live_server, busy)
    _open(page, api, 1280, 800)
    words = {
        "zh": ("USB序列号与2号托架相同，已按托架分别采集；请通知管理员",
               "USB序列号与1号托架相同，已按托架分别采集；请通知管理员",
               "记录仪无可用USB序列号，无法登记绑定；请通知管理员"),
        "en": ("Same USB serial as bay 2: each copied from its own bay. Tell the administrator",
               "Same USB serial as bay 1: each copied from its own bay. Tell the administrator",
               "No usable USB serial, it cannot be registered: tell the administrator"),
    }
    for language, (first, second, missing) in words.items():
        expect(_tile(page, 1).locator(".usb-serial")).to_have_text(first)
        expect(_tile(page, 2).locator(".usb-serial")).to_have_text(second)
        expect(_tile(page, 6).locator(".usb-serial")).to_have_text(missing)
        for number in (1, 2, 6):
            expect(_tile(page, number).locator(".usb-serial")).to_be_visible()
        # The warning says more; the docking goes on, and its own words and LED stay.
        expect(_tile(page, 1).locator(".state")).to_have_text(("正在采集", "Copying")[language == "en"])
        expect(_tile(page, 1).locator(".led")).to_have_attribute("data-led", "COPYING")
        found = page.evaluate(OVERFLOW_JS)
        assert (found["wide"], found["tall"], found["page"]) == ([], [], [False, False]), (language, found)
        shot(page, f"dock-usb-serial-{language}")
        page.locator("#language").click()
    # Control: the warning going (the other recorder left) takes the words away; a bay never warned
    # has none.
    api.set_bay({**busy[0], "usb_serial_warning": None})
    expect(_tile(page, 1).locator(".usb-serial")).to_be_hidden()
    expect(_tile(page, 1).locator(".usb-serial")).to_have_text("")
    expect(_tile(page, 3).locator(".usb-serial")).to_be_hidden()


def test_the_language_switch_is_remembered(page: Page, live_server: LiveServer) -> None:
    api = StatusApi(live_server, [bay(1, "done")])
    _open(page, api)
    expect(_tile(page, 1).locator(".state")).to_have_text("采集完成")
    expect(page.locator("#language")).to_have_text("English")
    page.locator("#language").click()
    expect(_tile(page, 1).locator(".state")).to_have_text("Done")
    expect(page.locator("#language")).to_have_text("中文")
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=EXPECT_MS)
    expect(_tile(page, 1).locator(".state")).to_have_text("Done")
    page.locator("#language").click()
    page.reload()
    expect(_tile(page, 1).locator(".state")).to_have_text("采集完成")


# Every text element of the page, and whether its content is wider than its box, for each tile whether
# its content is taller than the tile, and whether the page scrolls at all (a kiosk cannot scroll).
OVERFLOW_JS = """() => {
  const wide = [...document.querySelectorAll('[data-text]')]
    .filter((e) => e.offsetParent !== null && e.scrollWidth > e.clientWidth)
    .map((e) => `${e.className || e.id || e.tagName}: ${e.textContent}`
                + ` (${e.scrollWidth} > ${e.clientWidth})`);
  const tall = [...document.querySelectorAll('.bay, #legend, #station')]
    .filter((e) => e.scrollHeight > e.clientHeight)
    .map((e) => `${e.dataset.bay || e.id}: ${e.scrollHeight} > ${e.clientHeight}`);
  const root = document.documentElement;
  return {wide, tall, page: [root.scrollWidth > innerWidth, root.scrollHeight > innerHeight],
          texts: document.querySelectorAll('.bay [data-text]').length};
}"""


@pytest.mark.parametrize(("width", "height"), KIOSK_SIZES)
def test_chinese_and_english_text_fit_the_tiles_at_kiosk_sizes(
    page: Page, live_server: LiveServer, width: int, height: int
) -> None:
    api = StatusApi(live_server, _busy_bays())
    _open(page, api, width, height)
    for language in ("zh", "en"):
        expect(_tile(page, 1).locator(".files")).to_contain_text("1234/9999")
        found = page.evaluate(OVERFLOW_JS)
        assert found["texts"] >= 8 * 10, "the check must see every text of every tile"
        # A collapsed layout overflows nothing: the tiles must fill most of the screen.
        tiles_px = page.evaluate(
            "[...document.querySelectorAll('.bay')].map((t) => t.clientHeight * t.clientWidth)"
        )
        assert sum(tiles_px) >= 0.5 * width * height, tiles_px
        assert (found["wide"], found["tall"], found["page"]) == ([], [], [False, False]), (language, found)
        # Readable from two metres: the state in large type, the instruction not much smaller.
        state_px, instruction_px = (
            float(page.evaluate(f"parseFloat(getComputedStyle(document.querySelector('{css}')).fontSize)"))
            for css in (".bay .state", ".bay .instruction")
        )
        assert state_px >= height / 36 and instruction_px >= height / 54, (state_px, instruction_px)
        shot(page, f"dock-busy-{language}-{width}x{height}")
        page.locator("#language").click()


# WCAG contrast of every text in the tiles and the header against the background it is drawn on.
CONTRAST_JS = """() => {
  const rgb = (css) => css.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map((v) => v / 255)
    .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const colour = rgb(getComputedStyle(e).backgroundColor);
      if (colour.length < 4 || colour[3] > 0) return colour;
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll('.bay [data-text], #station [data-text]')]
    .filter((e) => e.offsetParent !== null && e.textContent.trim() !== '')
    .map((e) => {
      const [a, b] = [luminance(rgb(getComputedStyle(e).color)), luminance(background(e))];
      return [e.className || e.id, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
    });
}"""


def test_every_text_stands_out_from_its_background(page: Page, live_server: LiveServer) -> None:
    api = StatusApi(live_server, _busy_bays())
    _open(page, api, 1920, 1080)
    ratios = page.evaluate(CONTRAST_JS)
    assert len(ratios) > 60
    low = [(name, round(ratio, 2)) for name, ratio in ratios if ratio < 4.5]
    assert low == [], low


def test_the_overflow_check_sees_text_that_does_not_fit(page: Page, live_server: LiveServer) -> None:
    # The control of the test above: a tile whose text cannot fit is reported.
    api = StatusApi(live_server, _busy_bays())
    _open(page, api, 1280, 800)
    # (The page's Content-Security-Policy refuses an injected style sheet; the CSSOM is allowed.)
    page.evaluate("""() => { for (const e of document.querySelectorAll('.bay .officer')) {
        e.style.whiteSpace = 'nowrap'; e.style.overflowWrap = 'normal'; e.style.fontSize = '40px'; } }""")
    found = page.evaluate(OVERFLOW_JS)
    assert any(LONG_OFFICER["name"] in line for line in found["wide"]), found


def test_a_bay_follows_a_docking_live_without_reloading(page: Page, live_server: LiveServer) -> None:
    api = StatusApi(live_server, [bay(1), bay(2)])
    _open(page, api)
    page.evaluate("window.__sameDocument = true")
    tile = _tile(page, 1)
    expect(tile.locator(".state")).to_have_text("空闲")
    shot(page, "dock-live-empty")

    api.set_bay(bay(1, "authenticating"))
    expect(tile.locator(".state")).to_have_text("正在识别")
    expect(tile.locator(".officer")).to_have_text("张伟")
    expect(tile.locator(".badge")).to_have_text("警号 110001")
    widths = []
    for done in (1, 2):
        api.set_bay(bay(1, "copying", files_done=done, files_total=3, bytes_done=done * 100, bytes_total=300,
                        speed_bps=35_000_000, eta_s=90))
        expect(tile.locator(".files")).to_have_text(f"文件 {done}/3")
        expect(tile.locator(".fill")).to_have_attribute("style", f"width: {done * 100 // 3}%;")
        widths.append(tile.locator(".fill").get_attribute("style"))
    expect(tile.locator(".speed")).to_have_text("35.0 MB/s")
    expect(tile.locator(".eta")).to_have_text("剩余 1 分 30 秒")
    assert tile.get_attribute("data-colour") == "blue"
    shot(page, "dock-live-copying")
    api.set_bay(bay(1, "done", files_done=3, files_total=3, bytes_done=300, bytes_total=300))
    expect(tile.locator(".state")).to_have_text("采集完成")
    expect(tile.locator(".fill")).to_have_attribute("style", "width: 100%;")
    assert tile.get_attribute("data-colour") == "green"
    api.set_station(central={"configured": True, "reachable": False, "breaker": "open"},
                    spool={"items": 0, "bytes": 0, "oldest_at": None})
    expect(page.locator("#fact-central dd")).to_have_text("暂停上传")
    expect(page.locator("#fact-backlog dd")).to_have_text("无")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    shot(page, "dock-live-done")


def test_the_screen_says_when_the_station_is_gone_and_reconnects(page: Page, live_server: LiveServer) -> None:
    api = StatusApi(live_server, [bay(1)])
    _open(page, api)
    page.evaluate("window.__sameDocument = true")
    assert api.connections == 1
    api.drop_streams()  # the agent restarts: the browser waits its retry time before reconnecting
    expect(page.locator("body")).to_have_attribute("data-connection", "lost", timeout=EXPECT_MS)
    expect(page.locator("#banner")).to_have_text("与采集站的连接已中断，正在重新连接…")
    shot(page, "dock-disconnected")
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=EXPECT_MS)
    expect(page.locator("#banner")).to_be_hidden()
    # Updates after the reconnection arrive: the new stream is the one followed.
    api.set_bay(bay(1, "error", error_class="pulled_early"))
    expect(_tile(page, 1).locator(".instruction")).to_have_text("采集未完成。请将执法记录仪放回原位")
    assert api.connections >= 2
    assert page.evaluate("window.__sameDocument") is True


def test_device_text_is_shown_as_text(page: Page, live_server: LiveServer) -> None:
    hostile = '<img src=x onerror="window.__pwned=1">'
    api = StatusApi(live_server, [bay(1, "copying", officer={"name": hostile, "badge": "<b>1</b>"},
                                     device={"serial": "</p><script>window.__pwned=2</script>",
                                             "model": "&amp;", "battery_pct": 5})])
    _open(page, api)
    tile = _tile(page, 1)
    expect(tile.locator(".officer")).to_have_text(hostile)
    expect(tile.locator(".model")).to_have_text("&amp;")
    expect(tile.locator(".serial")).to_have_text("</p><script>window.__pwned=2</script>")
    assert page.locator(".bay img, .bay script, .bay b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_the_legend_and_each_tile_show_the_bay_led_patterns(page: Page, live_server: LiveServer) -> None:
    api = StatusApi(live_server, [bay(1, "error", error_class="pulled_early"),
                                  bay(2, "error", error_class="not_allowed"),
                                  bay(3, "awaiting_receipt"), bay(4, "copying")])
    _open(page, api)
    leds = {1: "PULLED", 2: "DENIED", 3: "RECEIPT", 4: "COPYING"}
    for number, led in leds.items():
        expect(_tile(page, number).locator(".led")).to_have_attribute("data-led", led)
    # The tile's LED blinks at the bay board's rhythm: slow for pulled early, fast for not allowed.
    periods = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.bay')].map(
        (t) => [t.dataset.bay,
                t.querySelector('.led').getAnimations().map((a) => a.effect.getTiming().duration)]))""")
    assert periods == {"1": [1000], "2": [250], "3": [2000], "4": [1000]}
    legend = page.locator("#legend li")
    expect(legend).to_have_count(12)
    expect(page.locator('#legend li[data-led="BOUNCING"]')).to_contain_text("托架插拔信号异常，通知管理员")
    expect(page.locator('#legend li[data-led="BOUNCING"]')).to_contain_text("黄·三闪")
    expect(page.locator('#legend li[data-led="PULLED"]')).to_contain_text("拔出过早，请放回")
    expect(page.locator('#legend li[data-led="PULLED"]')).to_contain_text("红·慢闪")
    expect(page.locator('#legend li[data-led="DENIED"]')).to_contain_text("红·快闪")
    page.locator("#language").click()
    expect(page.locator('#legend li[data-led="PASSWORD"]')).to_contain_text("red·double flash")
    expect(page.locator('#legend li[data-led="BOUNCING"]')).to_contain_text(
        "Bay sensor faulty, tell the administrator"
    )
    expect(page.locator('#legend li[data-led="BOUNCING"]')).to_contain_text("amber·triple flash")
    # A bouncing empty bay's dot blinks the triple flash: 150/150 x 3 then a pause, 2 s in all.
    api.set_bay(bay(5, "empty", bouncing=True))
    expect(_tile(page, 5).locator(".led")).to_have_attribute("data-led", "BOUNCING")
    assert page.evaluate("""() => document.querySelector('.bay[data-bay="5"] .led').getAnimations()
        .map((a) => a.effect.getTiming().duration)""") == [1800]


def test_every_error_class_and_bay_state_of_the_status_model_has_words_and_a_led() -> None:
    # The status model's codes (edge.observe.sink) against what the screen knows: a new class or state
    # added there fails here until it has words (INSTRUCTIONS above, static/i18n.js) and an LED.
    assert {error_class for error_class, _, _ in INSTRUCTIONS} == {c.value for c in ErrorClass}
    assert set(STATE_LEDS) == {phase.value for phase in BayPhase}
