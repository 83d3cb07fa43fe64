r"""Starts N processes of one command on this machine, joined by JAX's multi-controller runtime.

  python launch/local.py --num_processes=2 --cpu_devices_per_process=2 -- \
      avcd train --config=configs/tiny.py --workdir=/tmp/avcd_two_processes

  python launch/local.py --num_processes=4 --gpus_per_process=2 -- \
      avcd train --config=configs/default.py --workdir=runs/fakeavceleb ...

Each process gets the variables `avcd` hands to `jax.distributed.initialize`:
JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT (process 0 serves it), JAX_NUM_PROCESSES and
JAX_PROCESS_ID, plus its devices: JAX_NUM_CPU_DEVICES (fake CPU devices, for tests) or
JAX_LOCAL_DEVICE_IDS (the GPUs it drives, read by JAX itself). Nothing else passes between the
processes. Their output is printed line by line with a `[i]` prefix. When one process fails the
others are stopped, since they would otherwise wait for it at the next collective, and the
launcher exits with the first failure's status.
"""

import os
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices_per_process",
  None,
  "Run on the CPU with this many devices per process.",
  lower_bound=1,
)
_GPUS = flags.DEFINE_integer(
  "gpus_per_process", None, "GPUs per process: process i drives GPUs i*K .. i*K+K-1.", lower_bound=1
)
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port (0: a free one).")
_STOP_GRACE_SECONDS = 10


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(
  index: int, num_processes: int, port: int, *, cpu_devices: int | None, gpus: int | None
) -> dict[str, str]:
  """The environment of process `index`: this one's, plus the coordination and device variables."""
  env = dict(
    os.environ,
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
    JAX_NUM_PROCESSES=str(num_processes),
    JAX_PROCESS_ID=str(index),
  )
  if cpu_devices:
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(cpu_devices))
  if gpus:
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(i) for i in range(index * gpus, (index + 1) * gpus))
  return env


def _relay(index: int, stream) -> None:
  for line in stream:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def run(
  command: list[str],
  num_processes: int,
  *,
  port: int = 0,
  cpu_devices: int | None = None,
  gpus: int | None = None,
) -> int:
  """Runs `command` as processes 0..num_processes-1; returns 0 or the first failure's status."""
  port = port or free_port()
  processes, relays = [], []
  for index in range(num_processes):
    process = subprocess.Popen(
      command,
      env=process_environment(index, num_processes, port, cpu_devices=cpu_devices, gpus=gpus),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
    )
    relay = threading.Thread(target=_relay, args=(index, process.stdout), daemon=True)
    relay.start()
    processes.append(process)
    relays.append(relay)

  status = 0
  try:
    running = set(range(num_processes))
    while running and not status:
      for index in sorted(running):
        code = processes[index].poll()
        if code is not None:
          running.discard(index)
          if code:
            print(
              f"launch/local.py: process {index} exited with status {code}; stopping the others",
              file=sys.stderr,
            )
            status = code
      time.sleep(0.2)
  finally:
    _stop(processes)
    for relay in relays:
      relay.join()
  return status


def _stop(processes: list[subprocess.Popen]) -> None:
  """Terminates the processes still running, then kills those that ignore it."""
  for process in processes:
    if process.poll() is None:
      process.terminate()
  deadline = time.monotonic() + _STOP_GRACE_SECONDS
  for process in processes:
    try:
      process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError("give the command after --, e.g. -- avcd train --config=...")
  if _CPU_DEVICES.value and _GPUS.value:
    raise app.UsageError("--cpu_devices_per_process and --gpus_per_process exclude each other")
  sys.exit(
    run(
      command,
      _NUM_PROCESSES.value,
      port=_PORT.value,
      cpu_devices=_CPU_DEVICES.value,
      gpus=_GPUS.value,
    )
  )


if __name__ == "__main__":
  app.run(main)
