"""`avcd serve` as a process, checked through its page in headless Chromium, then stopped with a
request in flight. Skipped only where Chromium or its driver is not installed (.ci/run installs
both: Debian's chromium and chromium-driver)."""

import json
import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
import requests

from avcd import checkpoints, config_lib
from avcd.models import build
from tests import media_utils
from tests.conftest import REPO

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


class Served:
  """`avcd serve` in a process, its log lines read as they come (the test waits on them)."""

  def __init__(self, args, env):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.process = subprocess.Popen(
      [sys.executable, "-m", "avcd.cli", "serve", f"--port={self.port}", *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    self.lines, self.log = queue.Queue(), []
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.process.stderr:
      self.log.append(line)
      self.lines.put(line)
    self.lines.put(None)

  def wait_for(self, text: str, timeout: float = 300) -> str:
    while True:
      line = self.lines.get(timeout=timeout)
      assert line is not None, "avcd serve ended:\n" + "".join(self.log[-40:])
      if text in line:
        return line


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  folder = tmp_path_factory.mktemp("served")
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  _, params, batch_stats = build.split_model(build.build_student(config.model, config.seed))
  checkpoints.save_model(
    folder / "checkpoint", config=config, student_state=dict(params=params, batch_stats=batch_stats)
  )
  uploads = folder / "tmp"  # the server's temporary directory, to see that it is left empty
  uploads.mkdir()
  served = Served(
    [f"--workdir={folder / 'checkpoint'}", "--length_buckets=50,100", "--max_frames=100"],
    dict(os.environ, TMPDIR=str(uploads)),
  )
  served.wait_for("ready: ")
  yield served, uploads
  if served.process.poll() is None:
    served.process.kill()


@pytest.fixture(scope="module")
def carphone(tmp_path_factory) -> pathlib.Path:
  """The real talking-face clip with a voice-like track, as tests/test_predict.py makes it."""
  with av.open(str(media_utils.carphone())) as container:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  audio = media_utils.tone(4.0, 16_000, frequency=220.0)
  return media_utils.write_video(
    tmp_path_factory.mktemp("media") / "carphone.mp4",
    frames,
    fps=30000 / 1001,
    audio=audio,
    lossless=False,  # lossless H.264 (High 4:4:4) is a profile browsers do not play
  )


def test_the_page_shows_the_scores_over_the_video_as_the_json_says(served, carphone, tmp_path):
  if CHROMIUM is None or DRIVER is None:
    pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium-driver)")
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support import (  # pylint: disable=g-import-not-at-top
    expected_conditions as until,
    wait,
  )

  served, _ = served
  expected = requests.post(
    f"{served.url}/v1/predict", files={"video": carphone.open("rb")}, timeout=300
  ).json()["videos"][0]
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ("--headless=new", "--no-sandbox", "--window-size=420,1100"):
    options.add_argument(argument)  # 420 px: a phone's width
  browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
  try:
    browser.get(served.url)
    browser.find_element(By.ID, "file").send_keys(str(carphone))
    assert browser.find_element(By.ID, "progress-row").is_displayed()
    wait.WebDriverWait(browser, 300).until(until.visibility_of_element_located((By.ID, "result")))
    assert not browser.find_element(By.ID, "progress-row").is_displayed()
    # The player has the video's frames; the face box sits over them.
    wait.WebDriverWait(browser, 60).until(
      lambda b: b.execute_script("return document.getElementById('player').videoWidth") > 0
    )
    player = browser.find_element(By.ID, "player")
    face_box = browser.find_element(By.ID, "face-box")
    assert face_box.is_displayed()
    scale = player.rect["width"] / browser.execute_script("return arguments[0].videoWidth", player)
    x, y, width, height = expected["face_detection"]["box"]
    assert face_box.rect["x"] - player.rect["x"] == pytest.approx(x * scale, abs=3)
    assert face_box.rect["width"] == pytest.approx(width * scale, abs=3)
    assert face_box.rect["y"] - player.rect["y"] == pytest.approx(y * scale, abs=3)
    assert face_box.rect["height"] == pytest.approx(height * scale, abs=3)
    # One timeline point per frame scored, at its P(fake).
    points = browser.execute_script(
      "return Array.from(document.getElementById('frame-line').points, p => p.y)"
    )
    assert len(points) == expected["num_frames"] == 100
    np.testing.assert_allclose(
      points, [(1 - p) * 100 for p in expected["frame_probabilities"]], atol=0.01
    )
    segments = browser.find_elements(By.CSS_SELECTOR, "#segments li")
    shading = browser.find_elements(By.CSS_SELECTOR, "#segment-shading rect")
    if expected["segments"]:
      assert len(segments) == len(shading) == len(expected["segments"])
      first = expected["segments"][0]
      assert f"{first['start_s']:.2f}–{first['end_s']:.2f} s" in segments[0].text
    else:
      assert len(segments) == 1 and segments[0].text.startswith("None") and not shading
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.text.lower().startswith(expected["label"])
    assert f"P(fake) {expected['probability']:.3f}" in verdict.text
    assert "threshold 0.50" in verdict.text
    # Clicking the timeline a quarter of the way along (offsets are from its centre) seeks to
    # 1 s of the 4; the playhead follows the player.
    timeline = browser.find_element(By.ID, "timeline")
    webdriver.ActionChains(browser).move_to_element_with_offset(
      timeline, -timeline.rect["width"] / 4, 0
    ).click().perform()
    wait.WebDriverWait(browser, 30).until(
      lambda b: abs(b.execute_script("return arguments[0].currentTime", player) - 1.0) < 0.1
    )
    playhead = float(browser.find_element(By.ID, "playhead").get_attribute("x1"))
    assert playhead == pytest.approx(250, abs=25)
    # The download is the JSON the API answers.
    download = browser.find_element(By.ID, "download")
    assert download.get_attribute("download") == "carphone.avcd.json"
    downloaded = browser.execute_async_script(
      "fetch(arguments[0]).then(r => r.json()).then(arguments[1])", download.get_attribute("href")
    )
    assert downloaded["videos"][0]["frame_probabilities"] == expected["frame_probabilities"]
    screenshot = tmp_path / "avcd_serve_page.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the page: {screenshot}")
  finally:
    browser.quit()


def test_sigterm_finishes_the_request_in_flight_then_exits_0(served, carphone):
  served, uploads = served
  answer = {}

  def post():
    with carphone.open("rb") as file:
      answer["response"] = requests.post(
        f"{served.url}/v1/predict", files={"video": ("in_flight.mp4", file)}, timeout=300
      )

  client = threading.Thread(target=post)
  client.start()
  served.wait_for("scoring in_flight.mp4")
  served.process.send_signal(signal.SIGTERM)
  client.join(timeout=300)
  assert answer["response"].status_code == 200
  assert json.loads(answer["response"].text)["videos"][0]["path"] == "in_flight.mp4"
  assert served.process.wait(timeout=120) == 0, "".join(served.log[-40:])
  with pytest.raises(requests.ConnectionError):
    requests.get(f"{served.url}/healthz", timeout=10)
  assert list(uploads.iterdir()) == []  # the upload and the service's directory are gone
