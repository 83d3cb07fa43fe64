"""avcd serve: a scoring service (HTTP API) and a web page to check a video.

  avcd serve (--workdir=DIR [--checkpoint=STEP] | --saved-model=DIR) [--host=127.0.0.1]
             [--port=8000] [--token=TOKEN] [--max_upload_mb=100] [--queue_size=4]
             [--request_timeout_s=300] [--length_buckets=50,100,200,400,1000]

Loads the model, starts serving (GET /healthz answers at once), compiles the model for every
length bucket and then reports ready (GET /readyz, and a log line). POST /v1/predict scores an
uploaded video as `avcd predict` does; the page at / uses it. SIGTERM or SIGINT: in-flight
requests finish, new ones are refused, exit status 0. docs/serving.md describes the API.
"""

import os
import signal
import threading

from absl import app, flags, logging

from avcd.commands import model_source
from avcd.serving import options as predict_options

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory, or a model checkpoint directory (run by JAX)."
)
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step of --workdir (default: the latest).")
_SAVED_MODEL = flags.DEFINE_string(
  "saved_model", None, "A SavedModel from `avcd export` (run by TensorFlow)."
)
flags.DEFINE_alias("saved-model", "saved_model")
_HOST = flags.DEFINE_string(
  "host", "127.0.0.1", "Address to listen on; another than this host's own exposes the service."
)
_PORT = flags.DEFINE_integer("port", 8000, "TCP port.", lower_bound=0, upper_bound=65535)
_TOKEN = flags.DEFINE_string(
  "token",
  None,
  "Bearer token that clients not on this host must send (default: the AVCD_SERVE_TOKEN "
  "environment variable; none: no token asked).",
)
_MAX_UPLOAD_MB = flags.DEFINE_float(
  "max_upload_mb", 100.0, "Largest upload accepted, in MiB (larger: 413).", lower_bound=0
)
_QUEUE_SIZE = flags.DEFINE_integer(
  "queue_size",
  4,
  "Videos that may wait behind the one being scored; more get 503 with Retry-After.",
  lower_bound=0,
)
_REQUEST_TIMEOUT_S = flags.DEFINE_float(
  "request_timeout_s",
  300.0,
  "Seconds from an upload received to its answer, waiting included (longer: 504).",
  lower_bound=0,
)
_LENGTH_BUCKETS = flags.DEFINE_list(
  "length_buckets",
  [str(n) for n in (50, 100, 200, 400, 1000)],
  "Clip lengths (frames at 25 fps) the model is compiled for before serving; every call is "
  "padded to the next one. The last must hold --max_frames.",
)
_MAX_FRAMES = flags.DEFINE_integer(
  "max_frames",
  predict_options.PredictOptions().max_frames,
  "Score at most this many frames of a video (from its start).",
  lower_bound=1,
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"avcd serve takes no arguments, got {' '.join(argv[1:])}")
  try:
    buckets = tuple(int(n) for n in _LENGTH_BUCKETS.value)
  except ValueError:
    raise app.UsageError(
      f"--length_buckets={','.join(_LENGTH_BUCKETS.value)}: expected frame counts, e.g. 50,100"
    ) from None
  from avcd.serving import server  # pylint: disable=g-import-not-at-top

  try:
    limits = server.ServeLimits(
      max_upload_bytes=int(_MAX_UPLOAD_MB.value * 2**20),
      queue_size=_QUEUE_SIZE.value,
      request_timeout_s=_REQUEST_TIMEOUT_S.value,
      length_buckets=buckets,
      token=_TOKEN.value or os.environ.get(server.TOKEN_ENV) or None,
    )
    options = predict_options.PredictOptions(max_frames=_MAX_FRAMES.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  model_source.check(_WORKDIR.value, _SAVED_MODEL.value)

  import uvicorn  # pylint: disable=g-import-not-at-top

  scorer = model_source.load(_WORKDIR.value, _CHECKPOINT.value, _SAVED_MODEL.value)
  try:
    service = server.ScoringService(scorer, limits, options)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  exposed = not server.is_loopback(_HOST.value)
  if exposed and limits.token is None:
    logging.warning(
      "serving on %s without a token: anyone who can reach it can use it (--token)", _HOST.value
    )
  uvicorn_server = uvicorn.Server(
    uvicorn.Config(
      server.create_app(service),
      host=_HOST.value,
      port=_PORT.value,
      log_level="info",
      # In-flight requests may take their whole time limit before shutdown goes on.
      timeout_graceful_shutdown=int(limits.request_timeout_s) + 5,
    )
  )
  failure = []

  def compile_then_report_ready():
    try:
      service.compile()
    except Exception as e:  # pylint: disable=broad-except
      failure.append(e)
      uvicorn_server.should_exit = True
      return
    url = f"http://{_HOST.value}:{_PORT.value}/"
    logging.info(
      "ready: %s (%s step %s) compiled for %d shapes in %.1f s; serving %s",
      scorer.source.get("path") or scorer.source["checkpoint_dir"],
      scorer.source["kind"],
      scorer.source.get("step"),
      len(service.scorer.shapes()),
      service.compile_s,
      url,
    )

  # uvicorn stops on SIGTERM/SIGINT, then raises the signal again with the handler it found:
  # this one, so that a stop asked for is a clean exit (status 0), not death by the signal.
  for stop in (signal.SIGTERM, signal.SIGINT):
    signal.signal(stop, lambda *_: setattr(uvicorn_server, "should_exit", True))
  threading.Thread(target=compile_then_report_ready, name="avcd-compile", daemon=True).start()
  uvicorn_server.run()
  if failure:
    raise failure[0]
  return 0


if __name__ == "__main__":
  app.run(main)
