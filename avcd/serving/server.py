"""avcd serve: a scoring service over HTTP and the page at `/` that uses it (docs/serving.md).

    avcd serve (--workdir=DIR [--checkpoint=STEP] | --saved-model=DIR) [--host=127.0.0.1]

Each upload is scored as `avcd predict` scores a video (avcd.serving.predict.predict_video) and
answered with the same JSON document. The model is loaded once; every model call is padded to one
of a few lengths (LengthBuckets), each compiled before the service says it is ready, so that no
client waits for a compilation. Jobs are scored one at a time, in one worker thread: the face
detectors are one per process (face_detectors.detector) and not safe to share between threads,
and on a few cores a second job would only slow the first. At most `queue_size` jobs wait behind
it; more are refused (503 with Retry-After) rather than left to pile up.

Uploads are written to a directory of the service's own (`upload-XXXXXXXX`, never a name the
request chose) and removed when their job ends, whatever ends it; the directory goes at shutdown.
"""

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import importlib.resources
import ipaddress
import json
import math
import os
import pathlib
import shutil
import tempfile
import threading
import time
from typing import Annotated, Literal

import fastapi
import numpy as np
from absl import logging
from fastapi import responses, staticfiles
from starlette import concurrency

from avcd.serving import predict
from avcd.serving.options import DETECTORS, PredictOptions

DEFAULT_LENGTH_BUCKETS = (50, 100, 200, 400, 1000)
STATIC = importlib.resources.files("avcd.serving") / "static"
TOKEN_ENV = "AVCD_SERVE_TOKEN"
# Routes any client may call without a token: probes and the page (which holds no data; it asks
# for a token when the API answers 401).
_OPEN_PATHS = ("/healthz", "/readyz", "/", "/static/")


@dataclasses.dataclass(frozen=True)
class ServeLimits:
  """What one service accepts (the `avcd serve` flags)."""

  max_upload_bytes: int = 100 * 2**20
  queue_size: int = 4  # jobs waiting behind the one being scored
  request_timeout_s: float = 300.0  # from the upload received to the answer
  length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
  token: str | None = None  # bearer token asked of clients not on this host

  def __post_init__(self):
    if self.max_upload_bytes < 1:
      raise ValueError(f"the upload limit must be at least 1 byte, got {self.max_upload_bytes}")
    if self.queue_size < 0:
      raise ValueError(f"queue_size must be at least 0, got {self.queue_size}")
    if self.request_timeout_s <= 0:
      raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
    buckets = self.length_buckets
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
      raise ValueError(f"length buckets must be increasing positive lengths, got {buckets}")


class LengthBuckets:
  """A scorer whose calls are padded to a few shapes: clips to the next of `lengths` frames, and
  batches of windows to `clips_per_call(length)` clips, so that a call holds about
  `frames_per_call` frames whatever the window (memory stays that of one long clip). JAX (and
  TensorFlow's XLA) compile a program per input shape; unpadded, every new clip length would
  compile while its client waits. Padding frames (past `num_frames`) and padding clips do not
  change the real clips' outputs."""

  def __init__(self, scorer: predict.Scorer, lengths: tuple[int, ...], frames_per_call: int):
    self._scorer = scorer
    self.lengths, self.frames_per_call = tuple(lengths), frames_per_call
    self.features, self.source, self.config = scorer.features, scorer.source, scorer.config

  def bucket(self, frames: int) -> int:
    length = next((n for n in self.lengths if n >= frames), None)
    if length is None:
      raise ValueError(f"{frames} frames: longer than the longest length bucket {self.lengths[-1]}")
    return length

  def clips_per_call(self, window: int) -> int:
    """Windows of `window` frames per model call (predict's batch_size for that window)."""
    if window > self.lengths[-1]:
      return 1  # such a window is longer than any clip scored: each clip is its only window
    return max(1, self.frames_per_call // self.bucket(window))

  def shapes(self) -> list[tuple[int, int]]:
    """The (clips, frames) of every call: a whole clip, or a batch of windows, per length."""
    return [
      (clips, length)
      for length in self.lengths
      for clips in dict.fromkeys((1, self.clips_per_call(length)))
    ]

  def compile(self) -> None:
    """Calls the model once per shape (the compilations happen now, not on a client's time)."""
    rows, side = self.features["audio_frames_per_frame"], self.features["face_size"]
    for clips, length in self.shapes():
      self._scorer(
        np.zeros((clips, rows * length, self.features["num_mfcc"]), np.float32),
        np.zeros((clips, length, side, side), np.uint8),
        np.full(clips, length, np.int32),
      )

  def __call__(self, mfcc, faces, num_frames):
    clips, frames = faces.shape[:2]
    length = self.bucket(frames)
    padded_clips = 1 if clips == 1 else self.clips_per_call(length)
    if clips > padded_clips:
      raise ValueError(f"{clips} clips of {frames} frames: more than {padded_clips} per call")
    rows = mfcc.shape[1] // frames
    out = self._scorer(
      np.pad(mfcc, ((0, padded_clips - clips), (0, rows * (length - frames)), (0, 0))),
      np.pad(faces, ((0, padded_clips - clips), (0, length - frames), (0, 0), (0, 0))),
      np.pad(num_frames, (0, padded_clips - clips), constant_values=length),
    )
    return {k: v[:clips, :frames] if v.ndim > 1 else v[:clips] for k, v in out.items()}


class _RawProbability:
  """The scorer with its network's own P(fake) as `probability` (a request for raw scores)."""

  def __init__(self, scorer):
    self._scorer, self.features, self.config = scorer, scorer.features, scorer.config
    self.source = dict(scorer.source, calibration=None)

  def __call__(self, mfcc, faces, num_frames):
    out = self._scorer(mfcc, faces, num_frames)
    # SavedModels exported before calibration existed have no raw_probability: theirs is raw.
    return dict(out, probability=out.get("raw_probability", out["probability"]))


class JobTimeout(Exception):
  """A job's time ran out; raised at its next model call (decoding cannot be interrupted)."""


class _Deadline:
  """The scorer, refusing calls after `deadline` (time.monotonic()): a job whose client has
  been answered 504 stops at its next model call instead of scoring on for nobody."""

  def __init__(self, scorer, deadline: float):
    self._scorer, self._deadline = scorer, deadline
    self.features, self.source, self.config = scorer.features, scorer.source, scorer.config

  def __call__(self, mfcc, faces, num_frames):
    if time.monotonic() > self._deadline:
      raise JobTimeout("the request's time ran out")
    return self._scorer(mfcc, faces, num_frames)


def _refuse(status: int, detail: str, retry_after_s: float | None = None) -> fastapi.HTTPException:
  headers = (
    None if retry_after_s is None else {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
  )
  return fastapi.HTTPException(status, detail, headers=headers)


def config_digest(config: dict | None) -> str | None:
  """SHA-256 of the config's JSON with sorted keys: a checkpoint and its export share it."""
  if config is None:
    return None
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def recorded_metrics(source: dict) -> dict | None:
  """The evaluation metrics a training run recorded with the checkpoint `source` names (its
  `meta` item, checkpoints.py), when that checkpoint is still there and has any."""
  if "checkpoint_dir" not in source or "step" not in source:
    return None
  path = pathlib.Path(source["checkpoint_dir"]) / str(source["step"]) / "meta" / "metadata"
  try:
    metrics = json.loads(path.read_text()).get("metrics")
  except (OSError, ValueError, AttributeError):
    return None
  return metrics or None


class ScoringService:
  """The model, the worker that scores uploads one at a time, and the queue in front of it."""

  def __init__(
    self,
    scorer: predict.Scorer,
    limits: ServeLimits = ServeLimits(),
    options: PredictOptions = PredictOptions(),
  ):
    predict.check_features(scorer)
    if options.max_frames == 0 or options.max_frames > limits.length_buckets[-1]:
      raise ValueError(
        f"the longest length bucket ({limits.length_buckets[-1]} frames) must hold max_frames "
        f"({options.max_frames or 'no cap'})"
      )
    self.limits, self.options = limits, options
    # A call of windows holds as many frames as one of predict's default batches.
    self.scorer = LengthBuckets(scorer, limits.length_buckets, options.batch_size * options.window)
    self.upload_dir = pathlib.Path(tempfile.mkdtemp(prefix="avcd-serve-"))
    self.ready = threading.Event()  # compiled
    self.closing = threading.Event()  # shutting down: no new jobs
    self.compile_s: float | None = None
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="avcd-score")
    self._lock = threading.Lock()
    self._jobs = 0  # admitted and not finished: the one being scored and those waiting
    self._job_s = 10.0  # a running mean of job durations, for Retry-After

  def compile(self) -> None:
    started = time.monotonic()
    self.scorer.compile()
    self.compile_s = time.monotonic() - started
    self.ready.set()

  def model(self) -> dict:
    """What GET /v1/model answers."""
    source = self.scorer.source
    return dict(
      source=source,
      config_digest=config_digest(self.scorer.config),
      calibration=source.get("calibration"),
      evaluation=recorded_metrics(source),
      features=self.scorer.features,
      length_buckets=list(self.limits.length_buckets),
      defaults=dataclasses.asdict(self.options),
      compile_s=self.compile_s,
    )

  def _admit(self) -> None:
    with self._lock:
      if self.closing.is_set():
        raise _refuse(503, "the server is shutting down")
      if not self.ready.is_set():
        raise _refuse(503, "not ready: the model is being compiled", retry_after_s=5)
      if self._jobs > self.limits.queue_size:
        raise _refuse(
          503,
          f"busy: {self._jobs} videos are being scored or waiting; try again later",
          retry_after_s=self._job_s * self._jobs,
        )
      self._jobs += 1

  def _finished(self, seconds: float | None) -> None:
    with self._lock:
      self._jobs -= 1
      if seconds is not None:
        self._job_s = 0.8 * self._job_s + 0.2 * seconds

  def _job(self, upload, name: str, options: PredictOptions, raw: bool, deadline: float):
    """Runs in the worker thread: writes the upload to a file of the service's own, scores it,
    removes the file; returns the record (its path replaced by the upload's name) and the
    model's source as the record was scored."""
    started = time.monotonic()
    scorer = _Deadline(_RawProbability(self.scorer) if raw else self.scorer, deadline)
    try:
      handle, path = tempfile.mkstemp(prefix="upload-", dir=self.upload_dir)
      path = pathlib.Path(path)
      try:
        with os.fdopen(handle, "wb") as file:
          shutil.copyfileobj(upload, file)
        logging.info("scoring %s (%d bytes)", name, path.stat().st_size)
        record = predict.predict_video(scorer, path, options)
      finally:
        path.unlink(missing_ok=True)
    finally:
      self._finished(time.monotonic() - started)
    return dict(record, path=name), scorer.source

  def _cancelled(self, job: concurrent.futures.Future) -> None:
    """A job cancelled before it started (its time ran out in the queue) leaves the queue."""
    if job.cancelled():
      self._finished(None)

  async def score(self, upload: fastapi.UploadFile, options: PredictOptions, raw: bool) -> dict:
    """The JSON document of one uploaded video, or an HTTPException saying why not."""
    self._admit()
    deadline = time.monotonic() + self.limits.request_timeout_s
    # Only the last part of the client's file name is kept, and only to name the record.
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1] or "upload"
    try:
      job = self._worker.submit(self._job, upload.file, name, options, raw, deadline)
    except RuntimeError:  # the worker has shut down since _admit
      self._finished(None)
      raise _refuse(503, "the server is shutting down") from None
    job.add_done_callback(self._cancelled)
    try:
      record, source = await asyncio.wait_for(asyncio.wrap_future(job), deadline - time.monotonic())
    except (TimeoutError, JobTimeout):
      raise _refuse(
        504, f"scoring took longer than the limit of {self.limits.request_timeout_s:g} s"
      ) from None
    if record["status"] != "scored":
      raise _refuse(422, record["reason"])
    return predict.document([record], source=source, options=options)

  def close(self) -> None:
    """Refuses new jobs, waits for the admitted ones, removes the upload directory."""
    with self._lock:
      self.closing.set()
    self._worker.shutdown(wait=True)
    shutil.rmtree(self.upload_dir, ignore_errors=True)


def is_loopback(host: str | None) -> bool:
  """Whether `host` (an address, or 'localhost') is this machine's own."""
  if host == "localhost":
    return True
  try:
    return host is not None and ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def create_app(service: ScoringService) -> fastapi.FastAPI:
  """The HTTP API and the page; shutting the app down closes the service."""

  async def lifespan(_):
    yield
    await concurrency.run_in_threadpool(service.close)

  app = fastapi.FastAPI(
    title="avcd serve",
    summary="Scores videos for audio-visual deepfakes, as `avcd predict` does.",
    lifespan=lifespan,
    # FastAPI's documentation pages load their scripts from a CDN: only the schema is served.
    docs_url=None,
    redoc_url=None,
  )

  @app.exception_handler(fastapi.exceptions.RequestValidationError)
  async def one_line(_, error: fastapi.exceptions.RequestValidationError):
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "request"
    return responses.JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=422)

  @app.middleware("http")
  async def bearer_token(request: fastapi.Request, call_next):
    """With a token set, clients not on this host must send it, before their upload is read."""
    token, path = service.limits.token, request.url.path
    open_path = path == "/" or any(path.startswith(p) for p in _OPEN_PATHS if p != "/")
    if token and not open_path and not is_loopback(request.client and request.client.host):
      scheme, _, given = request.headers.get("authorization", "").partition(" ")
      if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return responses.JSONResponse(
          {"detail": "a bearer token is needed: Authorization: Bearer TOKEN"},
          status_code=401,
          headers={"WWW-Authenticate": "Bearer"},
        )
    return await call_next(request)

  @app.get("/healthz", summary="The process is up.")
  def healthz():
    return {"status": "alive"}

  @app.get(
    "/readyz", summary="The model is loaded and compiled for every length bucket, not stopping."
  )
  def readyz():
    if service.closing.is_set():
      raise _refuse(503, "the server is shutting down")
    if not service.ready.is_set():
      raise _refuse(503, "not ready: the model is being compiled", retry_after_s=5)
    return {"status": "ready", "compile_s": service.compile_s}

  @app.get("/v1/model", summary="The model loaded: checkpoint or export, step, calibration.")
  def model():
    return service.model()

  defaults = service.options

  @app.post(
    "/v1/predict",
    summary="Score one uploaded video; the answer is `avcd predict`'s JSON document.",
    max_body_size=service.limits.max_upload_bytes,
    responses={
      413: {"description": "The upload is larger than the server accepts."},
      422: {"description": "The video cannot be scored; `detail` is avcd predict's reason."},
      503: {"description": "Not ready, shutting down, or the queue is full (see Retry-After)."},
      504: {"description": "Scoring took longer than the server's time limit."},
    },
  )
  async def predict_upload(
    video: Annotated[fastapi.UploadFile, fastapi.File(description="The video file.")],
    detector: Annotated[Literal[DETECTORS], fastapi.Form()] = defaults.detector,
    window: Annotated[int, fastapi.Form(ge=1)] = defaults.window,
    stride: Annotated[int, fastapi.Form(ge=1)] = defaults.stride,
    threshold: Annotated[float, fastapi.Form(ge=0, le=1)] = defaults.threshold,
    probability: Annotated[Literal["calibrated", "raw"], fastapi.Form()] = "calibrated",
  ):
    options = dataclasses.replace(
      defaults,
      detector=detector,
      window=window,
      stride=stride,
      threshold=threshold,
      batch_size=service.scorer.clips_per_call(window),
    )
    return await service.score(video, options, raw=probability == "raw")

  @app.get("/", include_in_schema=False)
  def page():
    return responses.FileResponse(STATIC / "index.html")

  app.mount("/static", staticfiles.StaticFiles(directory=STATIC), name="static")
  return app
