"""avcd serve through FastAPI's test client: endpoints, limits, errors, shutdown, temporary files.

One tiny model and one compiled service for the module; the tests that need other limits build
services on the same scorer (its programs are compiled once). A gate in front of the model holds
a job in flight for as long as a test needs it there.
"""

import concurrent.futures
import json
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
from fastapi import testclient

from avcd import checkpoints, config_lib
from avcd.models import build
from avcd.serving import predict, server
from tests import media_utils
from tests.conftest import REPO

pytestmark = pytest.mark.slow

BUCKETS = (50, 100)
OPTIONS = predict.PredictOptions(max_frames=100)  # the longest bucket
LIMIT = 2 * 2**20  # bytes; the carphone clip is about 1.3 MB


class Gate:
  """The scorer, stopping each call while closed: `entered` is set when a call waits at it."""

  def __init__(self, scorer):
    self._scorer, self.features, self.source, self.config = (
      scorer,
      scorer.features,
      scorer.source,
      scorer.config,
    )
    self.entered, self.opened = threading.Event(), threading.Event()
    self.opened.set()

  def close(self):
    self.entered.clear()
    self.opened.clear()

  def __call__(self, *inputs):
    if not self.opened.is_set():
      self.entered.set()
      assert self.opened.wait(timeout=120), "a test left the gate closed"
    return self._scorer(*inputs)


def speech(num_frames: int) -> np.ndarray:
  return media_utils.tone(num_frames / 25, 16_000, frequency=220.0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  folder = tmp_path_factory.mktemp("media")
  with av.open(str(media_utils.carphone())) as container:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  flat = media_utils.flat_frames(np.full(60, 128, np.uint8), 96, 128)
  paths = dict(
    carphone=media_utils.write_video(
      folder / "carphone.mp4", frames, fps=30000 / 1001, audio=speech(100)
    ),
    no_audio=media_utils.write_video(folder / "no_audio.mp4", frames[:40]),
    no_face=media_utils.write_video(folder / "no_face.mp4", flat, audio=speech(60)),
    text=folder / "notes.txt",
    empty=folder / "empty.mp4",
    large=folder / "large.mp4",
  )
  paths["text"].write_text("not a video\n")
  paths["empty"].write_bytes(b"")
  paths["large"].write_bytes(np.random.default_rng(0).bytes(LIMIT + 1))
  return paths


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
  """The gated CheckpointScorer of a configs/tiny.py student."""
  folder = tmp_path_factory.mktemp("model")
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  _, params, batch_stats = build.split_model(build.build_student(config.model, config.seed))
  checkpoints.save_model(
    folder / "checkpoint", config=config, student_state=dict(params=params, batch_stats=batch_stats)
  )
  return Gate(predict.CheckpointScorer(folder / "checkpoint"))


def make_service(scorer, **limits) -> server.ScoringService:
  limits = dict(dict(max_upload_bytes=LIMIT, length_buckets=BUCKETS, queue_size=1), **limits)
  return server.ScoringService(scorer, server.ServeLimits(**limits), OPTIONS)


@pytest.fixture(scope="module")
def service(scorer):
  service = make_service(scorer)
  service.compile()
  return service


@pytest.fixture(scope="module")
def client(service):
  with testclient.TestClient(server.create_app(service)) as client:
    yield client


def upload(client, path, **form):
  with open(path, "rb") as file:
    return client.post("/v1/predict", files={"video": (path.name, file, "video/mp4")}, data=form)


def uploads_left(service) -> list:
  """The service's own upload files, once every admitted job has finished (the worker runs one
  job at a time, in order: a no-op submitted now runs after them)."""
  service._worker.submit(lambda: None).result()  # pylint: disable=protected-access
  return sorted(service.upload_dir.iterdir())


# --- endpoints --------------------------------------------------------------------------------


def test_probes_model_page_and_openapi(client, service):
  assert client.get("/healthz").json() == {"status": "alive"}
  assert client.get("/readyz").json()["status"] == "ready"
  model = client.get("/v1/model").json()
  assert model["source"]["kind"] == "checkpoint" and model["source"]["step"] == 0
  assert model["config_digest"] == server.config_digest(service.scorer.config)
  assert len(model["config_digest"]) == 64
  assert model["calibration"] is None and model["evaluation"] is None
  assert model["length_buckets"] == list(BUCKETS)
  page = client.get("/")
  assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
  for asset in ("app.js", "style.css"):
    assert client.get(f"/static/{asset}").status_code == 200
  paths = client.get("/openapi.json").json()["paths"]
  assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= set(paths)


def test_predict_answers_avcd_predict_s_document_for_the_upload(client, service, scorer, media):
  response = upload(client, media["carphone"], window="40", stride="20", threshold="0.4")
  assert response.status_code == 200, response.text
  document = response.json()
  assert set(document) == {"model", "options", "videos"} and len(document["videos"]) == 1
  record = document["videos"][0]
  assert record["path"] == "carphone.mp4"  # the client's name, not the server's file
  assert record["status"] == "scored" and record["num_frames"] == 100
  assert record["face_detection"]["reason"] == "only face"
  options = predict.PredictOptions(**document["options"])
  assert (options.window, options.stride, options.threshold) == (40, 20, 0.4)
  # What avcd predict computes for the same file, unpadded: the buckets change no number.
  expected = predict.predict_video(scorer, media["carphone"], options)
  for key in ("score", "probability", "raw_probability"):
    np.testing.assert_allclose(record[key], expected[key], atol=1e-5)
  np.testing.assert_allclose(record["frame_scores"], expected["frame_scores"], atol=1e-5)
  assert [w["start_frame"] for w in record["windows"]] == [0, 20, 40, 60]
  assert record["segments"] == expected["segments"] and record["label"] == expected["label"]
  assert document["model"] == scorer.source
  assert uploads_left(service) == []


def test_raw_probability_replaces_the_calibrated_one_and_the_map_is_not_claimed():
  class Calibrated:
    features, config = {}, {}
    source = dict(kind="checkpoint", calibration=dict(method="platt"))

    def __call__(self, *_):
      return dict(probability=np.array([0.9]), raw_probability=np.array([0.6]))

  raw = server._RawProbability(Calibrated())  # pylint: disable=protected-access
  assert raw(None, None, None)["probability"].tolist() == [0.6]
  assert raw.source["calibration"] is None and Calibrated.source["calibration"] is not None


def test_length_buckets_pad_calls_to_compiled_shapes():
  calls = []

  class Recorder:
    features, source, config = {}, {}, {}

    def __call__(self, mfcc, faces, num_frames):
      calls.append((faces.shape[:2], num_frames.tolist()))
      b, t = faces.shape[:2]
      return dict(score=np.arange(b, dtype=float), frame_logits=np.zeros((b, t, 2)))

  buckets = server.LengthBuckets(Recorder(), (50, 100), frames_per_call=200)
  assert buckets.shapes() == [(1, 50), (4, 50), (1, 100), (2, 100)]
  out = buckets(np.zeros((3, 4 * 30, 13)), np.zeros((3, 30, 8, 8)), np.full(3, 30))
  assert calls == [((4, 50), [30, 30, 30, 50])]
  assert out["frame_logits"].shape == (3, 30, 2) and out["score"].tolist() == [0, 1, 2]
  with pytest.raises(ValueError, match="longer than the longest length bucket 100"):
    buckets(np.zeros((1, 404, 13)), np.zeros((1, 101, 8, 8)), np.full(1, 101))


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, reason",
  [
    ("no_audio", "no audio track"),
    ("no_face", "no face found"),
    ("text", "unreadable file: "),  # an upload that is not a video
    ("empty", "unreadable file: "),  # zero bytes
  ],
)
def test_unscorable_uploads_get_422_with_predict_s_reason(client, service, media, name, reason):
  response = upload(client, media[name])
  assert response.status_code == 422
  detail = response.json()["detail"]
  assert detail.startswith(reason) and "\n" not in detail
  expected = predict.predict_video(service.scorer, media[name], OPTIONS)
  assert detail == expected["reason"]  # avcd predict's very line
  assert uploads_left(service) == []


def test_an_upload_over_the_limit_gets_413_unread(client, service, media):
  response = upload(client, media["large"])
  assert response.status_code == 413
  assert uploads_left(service) == []


def test_bad_form_fields_get_one_line_422(client, media):
  cases = [
    (dict(threshold="1.5"), "threshold: "),
    (dict(window="0"), "window: "),
    (dict(detector="dlib"), "detector: "),
    (dict(probability="both"), "probability: "),
  ]
  for form, start in cases:
    response = upload(client, media["no_audio"], **form)
    assert response.status_code == 422 and response.json()["detail"].startswith(start), form
  missing = client.post("/v1/predict", data=dict(window="50"))
  assert missing.status_code == 422 and missing.json()["detail"] == "video: Field required"


# --- queue, time limit, shutdown -------------------------------------------------------------


def test_requests_beyond_the_queue_get_503_with_retry_after(client, service, scorer, media):
  submitted = threading.Semaphore(0)
  submit = service._worker.submit  # pylint: disable=protected-access

  def counted(*args):
    future = submit(*args)
    submitted.release()
    return future

  scorer.close()
  with concurrent.futures.ThreadPoolExecutor(2) as clients:
    service._worker.submit = counted  # pylint: disable=protected-access
    try:
      running = clients.submit(upload, client, media["carphone"])
      assert scorer.entered.wait(timeout=120)  # the first is being scored
      waiting = clients.submit(upload, client, media["carphone"])
      assert submitted.acquire(timeout=120) and submitted.acquire(timeout=120)  # both admitted
      refused = upload(client, media["carphone"])
    finally:
      del service._worker.submit  # pylint: disable=protected-access
      scorer.opened.set()
    assert refused.status_code == 503 and "busy" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert running.result().status_code == waiting.result().status_code == 200
  assert uploads_left(service) == []


def test_a_job_over_the_time_limit_gets_504_and_leaves_no_file(scorer, media):
  service = make_service(scorer, request_timeout_s=0.5)
  service.compile()
  scorer.close()
  try:
    with testclient.TestClient(server.create_app(service)) as client:
      response = upload(client, media["carphone"])
      assert response.status_code == 504 and "longer than the limit of 0.5 s" in response.text
      scorer.opened.set()
      assert uploads_left(service) == []
  finally:
    scorer.opened.set()
  assert not service.upload_dir.exists()  # removed at shutdown


def test_shutdown_finishes_the_request_in_flight_and_refuses_new_ones(scorer, media):
  service = make_service(scorer)
  with testclient.TestClient(server.create_app(service)) as client:
    assert client.get("/readyz").status_code == 503  # not compiled yet
    not_ready = upload(client, media["no_audio"])
    assert not_ready.status_code == 503 and "Retry-After" in not_ready.headers
    service.compile()
    assert client.get("/readyz").status_code == 200
    scorer.close()
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
      in_flight = threads.submit(upload, client, media["carphone"])
      assert scorer.entered.wait(timeout=120)
      # What the app's shutdown runs once the server has stopped taking connections (uvicorn
      # waits for the requests in flight first; the test client does not, so it is called here).
      stopping = threads.submit(service.close)
      assert service.closing.wait(timeout=120)
      assert client.get("/readyz").status_code == 503
      refused = upload(client, media["carphone"])
      assert refused.status_code == 503
      assert refused.json()["detail"] == "the server is shutting down"
      assert not stopping.done()  # waiting for the job in flight
      scorer.opened.set()
      assert in_flight.result().status_code == 200
      stopping.result()
  assert not service.upload_dir.exists()


# --- token ----------------------------------------------------------------------------------


def test_a_token_is_asked_of_clients_not_on_this_host(scorer):
  service = make_service(scorer, token="s3cret")
  app = server.create_app(service)
  try:
    remote = testclient.TestClient(app, client=("203.0.113.9", 50000))
    assert remote.get("/v1/model").status_code == 401
    assert remote.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert remote.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert remote.post("/v1/predict").status_code == 401  # before any upload is read
    assert remote.get("/healthz").status_code == remote.get("/").status_code == 200
    local = testclient.TestClient(app, client=("127.0.0.1", 50000))
    assert local.get("/v1/model").status_code == 200
  finally:
    service.close()


# --- the command ----------------------------------------------------------------------------


def test_serve_applies_the_saved_model_check_and_says_why_in_one_line(tmp_path):
  metadata = dict(
    avcd_version="0.1.0",
    source=dict(checkpoint_dir=str(tmp_path), step=0, item="student"),
    signature=dict(name="serving_default"),
    features=dict(fps=25.0, face_size=112, sample_rate=16000, num_mfcc=13),
  )
  (tmp_path / "avcd_export.json").write_text(json.dumps(metadata))
  (tmp_path / "saved_model.pb").write_bytes(b"")  # a SavedModel with no graph
  result = subprocess.run(
    [sys.executable, "-m", "avcd.cli", "serve", f"--saved-model={tmp_path}", "--port=1"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    check=False,
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "UntrustedSavedModelError" in result.stderr and "0 meta graphs" in result.stderr
