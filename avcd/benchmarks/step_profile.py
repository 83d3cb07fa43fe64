r"""Where a step's time goes, op family by op family, in avcd and in the reference, on one CPU.

  python -m avcd.benchmarks.step_profile                                 # avcd's steps only
  python -m avcd.benchmarks.step_profile --reference=REF --batch=1x100 --batch=4x100

Each step runs a few times under a profiler and its time is split into op families (the space-time
stem, the visual ResNet's 2D convs, BatchNorm, max pool, temporal convs, attention, the audio
encoder's SE blocks and its other MFCC-side convs, the frozen teachers, augmentation, the loss,
the optimizer update). avcd's steps are built exactly as `avcd.benchmarks.train_step` builds them:
the train step with the teachers in the step (the VSR teacher's frontend reading the faces), the
train step reading stored lip features (`configs/fakeavceleb.py`, the reference's arrangement) and
the predict step.

`--reference=REF` also profiles the reference PyTorch implementation
(github.com/ljj898/CMDFD-Dataset-and-Deepfake-Detection, a local checkout; its code is imported
from there at run time and never copied here, and PyTorch must be installed: `pip install torch
--index-url https://download.pytorch.org/whl/cpu`): its train step as its `train_network` runs it
(student, both teachers on |STFT| and stored 512-d lip features in train mode, the three losses,
backward, Adam) and its `evaluate_network` forward, on random inputs of the same B x T, with
random weights.

How time is attributed. avcd: every model class's methods, the loss, augmentation and the
optimizer run under `jax.named_scope` while the step is traced (scopes are metadata: the compiled
program is the same), `jax.profiler` records every XLA:CPU thunk, and each thunk goes to the
family of its heaviest op (a fusion holding a convolution counts as that convolution's family, so
BatchNorm or ReLU that XLA fused into a conv is counted with the conv; an op XLA made itself takes
the name of its nearest named producer). Convolutions that XLA:CPU hands to Eigen, every one
while YNNPACK is off (avcd's default, avcd/__init__.py), record no trace event: the time when the
program ran but no traced thunk did is the row `UNTRACED`. Reference: every module's
forward runs under `torch.profiler.record_function(ClassName)`; forward ops go to the family of
their module, backward ops to the family of the forward op that created them (autograd sequence
numbers). In both, each family's share of the profiled op time is scaled to the step's median wall
time measured without the profiler, so the columns add up to the step time.

Writes the table to stdout and, with `--output=DIR`, `step_profile.json` and `step_profile.md`.
"""

import collections
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import ConfigDict

from avcd import compilation_cache, config_lib
from avcd.core import inference, sharding
from avcd.models import audio, layers, student, teachers, visual
from avcd.training import losses, state as train_state, steps as train_steps
from data_pipelines.reading import augment

UNTRACED = "convolutions on Eigen (not traced)"
VISUAL_INPUT = "visual input, stem ReLU and pooling"
FAMILIES = (
  "space-time stem (5x7x7)",
  "visual ResNet 2D convs",
  "BatchNorm",
  "max pool",
  VISUAL_INPUT,
  "temporal convs",
  "MFCC-side convs",
  "SE blocks",
  "attention",
  "classifier",
  "teachers",
  "augmentation",
  "loss",
  "optimizer update",
  UNTRACED,
  "other",
)


# ---------------------------------------------------------------------------------------------
# Families


def avcd_family(op_name: str, opcode: str) -> str:
  """The family of an avcd op from its scoped op name (class scopes, see `named_scopes`)."""
  scopes = set(op_name.split("/"))
  if "optimizer" in scopes:
    return "optimizer update"
  if scopes & {"ASRTeacher", "VSRTeacher"}:
    return "teachers"
  if "augment" in scopes:
    return "augmentation"
  if "MaskedBatchNorm" in scopes:
    return "BatchNorm"
  if "SqueezeExcite" in scopes:
    return "SE blocks"
  if "AudioEncoder" in scopes:
    return "MFCC-side convs"
  if "VisualFrontend" in scopes:
    if "ResNetLayer" in scopes:
      return "visual ResNet 2D convs"
    if "Conv" in scopes:
      return "space-time stem (5x7x7)"
    if opcode in ("reduce-window", "select-and-scatter"):
      return "max pool"
    return VISUAL_INPUT
  if scopes & {"TemporalBlock", "VisualEncoder"}:
    return "temporal convs"
  if "AttentionLayer" in scopes:
    return "attention"
  if "loss" in scopes:
    return "loss"
  if "Student" in scopes:
    return "classifier"
  return "other"


def reference_family(path: tuple[str, ...]) -> str:
  """The family of a reference op from the classes of the modules it ran in, outermost first."""
  names = set(path)
  if "optimizer" in names:
    return "optimizer update"
  if names & {"AudioNet", "VideoNet"}:
    return "teachers"
  if names & {"lossAV", "MetricCont_Spea"}:
    return "loss"
  if names & {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}:
    return "BatchNorm"
  if "SELayer" in names:
    return "SE blocks"
  if "audioEncoder" in names:
    return "MFCC-side convs"
  if "visualFrontend" in names:
    if "Conv3d" in names:
      return "space-time stem (5x7x7)"
    if "MaxPool3d" in names:
      return "max pool"
    if "ResNet" in names and "AvgPool2d" not in names:
      return "visual ResNet 2D convs"
    # The stem's ReLU and the reshape to frames run outside the ResNet, as avcd's do.
    return VISUAL_INPUT
  if names & {"visualTCN", "visualConv1D"}:
    return "temporal convs"
  if "attentionLayer" in names:
    return "attention"
  return "other"


# ---------------------------------------------------------------------------------------------
# avcd


@contextlib.contextmanager
def _patched(owner, name, wrap):
  original = getattr(owner, name)
  setattr(owner, name, wrap(original))
  try:
    yield
  finally:
    setattr(owner, name, original)


def _scoped(scope: str):
  def wrap(fn):
    @functools.wraps(fn)
    def scoped(*args, **kwargs):
      with jax.named_scope(scope):
        return fn(*args, **kwargs)

    return scoped

  return wrap


def _scoped_optimizer(make_optimizer):
  @functools.wraps(make_optimizer)
  def make(*args, **kwargs):
    tx = make_optimizer(*args, **kwargs)
    return optax.GradientTransformation(tx.init, _scoped("optimizer")(tx.update))

  return make


@contextlib.contextmanager
def named_scopes():
  """While tracing, every avcd model class's methods, Flax's Conv and Linear, the loss,
  augmentation and the optimizer run under a named scope: ops' names then say where they belong.
  Only metadata changes; the program XLA compiles is the same."""
  classes = [nnx.Conv, nnx.Linear]
  for module in (audio, layers, student, teachers, visual):
    classes += [
      c
      for _, c in inspect.getmembers(module, inspect.isclass)
      if issubclass(c, nnx.Module) and c.__module__ == module.__name__
    ]
  with contextlib.ExitStack() as stack:
    for cls in classes:
      for name, fn in list(vars(cls).items()):
        if inspect.isfunction(fn) and (name == "__call__" or not name.startswith("_")):
          stack.enter_context(_patched(cls, name, _scoped(cls.__name__)))
    stack.enter_context(_patched(losses, "detector_losses", _scoped("loss")))
    stack.enter_context(_patched(augment, "apply", _scoped("augment")))
    stack.enter_context(_patched(train_state, "make_optimizer", _scoped_optimizer))
    stack.enter_context(_patched(optax, "apply_updates", _scoped("optimizer")))
    yield


_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"(?:calls|to_apply|body)=%?([\w.\-]+)")
# An op's weight when a fusion holds several: the heaviest decides the fusion's family.
_OPCODE_WEIGHT = {"convolution": 4, "dot": 3, "reduce-window": 2, "select-and-scatter": 2}


@dataclasses.dataclass(frozen=True)
class Instruction:
  opcode: str
  op_name: str  # "" where XLA made the op itself (layout copies, split reductions, ...)
  operands: tuple[str, ...]
  calls: tuple[str, ...]  # computations it runs (a fusion's body, a reduction's function)


def _top_level(text: str, stop: str, depth: int = 0) -> int:
  """Index of the first `stop` character outside brackets (len(text) if none)."""
  for index, char in enumerate(text):
    depth += (char in "([{") - (char in ")]}")
    if char == stop and depth == 0:
      return index
  return len(text)


def _instruction(definition: str) -> tuple[str, tuple[str, ...]]:
  """Opcode and operand names of an instruction's right-hand side `SHAPE opcode(operands), ...`."""
  after_shape = definition[_top_level(definition, " ") + 1 :]  # a tuple shape holds spaces
  opcode, _, rest = after_shape.partition("(")
  operands = rest[: _top_level(rest, ")", depth=1)]
  return opcode, tuple(re.findall(r"%([\w.\-]+)", operands))


def _parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[str]]]:
  """Instructions by name and computations (name -> instruction names) of an optimized HLO
  module's text."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    if current is None or line.startswith(("%", "ENTRY")):
      match = _COMPUTATION.match(line)
      if match and "=" not in line.split("{")[0].split("(")[0]:
        current = computations.setdefault(match.group(1), [])
        continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      op_name = _OP_NAME.search(line)
      opcode, operands = _instruction(match.group(2))
      instructions[match.group(1)] = Instruction(
        opcode, op_name.group(1) if op_name else "", operands, tuple(_CALLS.findall(line))
      )
      current.append(match.group(1))
  return instructions, computations


def _heaviest(name: str, instructions: dict, computations: dict) -> tuple[int, str, str]:
  """(weight, op_name, opcode) of the heaviest op of an instruction and what it calls."""
  best, seen, todo = (-1, "", ""), set(), [name]
  while todo:
    current = todo.pop()
    if current in seen or current not in instructions:
      continue
    seen.add(current)
    op = instructions[current]
    weight = _OPCODE_WEIGHT.get(op.opcode, 1 if op.op_name else 0)
    if weight > best[0] or (weight == best[0] and op.op_name and not best[1]):
      best = (weight, op.op_name, op.opcode)
    for computation in op.calls:
      todo.extend(computations.get(computation, ()))
  return best


def thunk_family(name: str, instructions: dict, computations: dict) -> str:
  """A thunk's family: that of its heaviest op, looking inside fusions and called computations.

  An op that XLA made itself has no name; it takes the name of the nearest producer of its
  operands that has one (a split reduction that of the BatchNorm it reduces, a layout copy that of
  the conv it feeds), keeping its own opcode.
  """
  _, op_name, opcode = _heaviest(name, instructions, computations)
  frontier, seen = [name], {name}
  for _ in range(4):  # producers up to four steps back
    if op_name:
      break
    frontier = [o for n in frontier for o in instructions[n].operands if o in instructions]
    frontier = [o for o in frontier if not (o in seen or seen.add(o))]
    for operand in frontier:
      op_name = op_name or _heaviest(operand, instructions, computations)[1]
  return avcd_family(op_name, opcode)


def _union_ns(intervals: list[tuple[int, int]]) -> int:
  """Nanoseconds covered by at least one of the (start, end) intervals."""
  covered, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start > reach:
      covered, reach = covered + end - start, end
    elif end > reach:
      covered, reach = covered + end - reach, end
  return covered


def _self_times(events) -> dict[str, float]:
  """Nanoseconds of each event name on one profiler line, less the events nested in it."""
  out = collections.Counter()
  stack = []  # (end, name, child_ns)
  for start, duration, name in sorted(events, key=lambda e: (e[0], -e[1])):
    while stack and start >= stack[-1][0]:
      end, parent, children = stack.pop()
      out[parent] -= children
    if stack:
      stack[-1] = (stack[-1][0], stack[-1][1], stack[-1][2] + duration)
    out[name] += duration
    stack.append((start + duration, name, 0))
  for _, parent, children in stack:
    out[parent] -= children
  return out


def _profile_compiled(run, hlo_text: str, steps: int) -> dict[str, float]:
  """Nanoseconds per family over `steps` runs of `run` (each waited for) under jax.profiler.

  XLA:CPU's thunks record trace events, except the convolutions it hands to Eigen (those outside
  YNNPACK fusions): the time when the program ran but no traced thunk did goes to `UNTRACED`.
  """
  instructions, computations = _parse_hlo(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      jax.block_until_ready(run())
    jax.profiler.stop_trace()
    (path,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
    profile = jax.profiler.ProfileData.from_file(str(path))
  family_of = {}  # thunk name -> family, worked out once per program
  families, traced, programs = collections.Counter(), [], []
  for plane in profile.planes:
    for line in plane.lines:
      events = [(e.start_ns, e.duration_ns, e.name) for e in line.events]
      for name, ns in _self_times(events).items():
        if name in instructions:  # thunks; the executor's and Python's own events are not
          if name not in family_of:
            family_of[name] = thunk_family(name, instructions, computations)
          families[family_of[name]] += ns
      traced += [(t, t + d) for t, d, name in events if name in instructions]
      programs += [(t, t + d) for t, d, name in events if name.startswith("ThunkExecutor::Execute")]
  if families:
    # Traced thunks run on several threads at once: their summed times are CPU time, which the
    # table scales to the wall time during which some traced thunk ran; the rest of the
    # program's wall time is untraced.
    program_ns = _union_ns(programs)
    traced_ns = min(_union_ns(traced), program_ns)
    scale = traced_ns / sum(families.values())
    families = {family: ns * scale for family, ns in families.items()}
    if program_ns > traced_ns:
      families[UNTRACED] = program_ns - traced_ns
  return dict(families)


class _Avcd:
  """One avcd step (train or predict), compiled as avcd runs it."""

  def __init__(self, config_path: str, kind: str, rows: int, length: int):
    config = config_lib.load_config(config_path, {"teachers.source": "random"})
    mesh = sharding.make_mesh(ConfigDict(dict(data=-1, fsdp=1)), jax.local_devices())
    with named_scopes():
      step = train_steps.make_train_step(config, mesh)
      batch = sharding.global_batch(
        train_steps.random_train_batch(step.batch(length, rows), np.random.default_rng(0)), mesh
      )
      if kind == "train":
        state, teachers_state = step.initial_arguments()
        lowered = step.lower(length, rows)
        # The step donates its state: each call takes the state the previous one returned.
        self._state = state
        self._arguments = lambda: (self._state, batch, teachers_state)
      else:
        state = step.init_state()
        inputs = {k: batch[k] for k in inference.MODEL_INPUTS}
        lowered = step.predict_step().lower(state.params, state.batch_stats, inputs)
        self._arguments = lambda: (state.params, state.batch_stats, inputs)
    self._kind = kind
    self._compiled = lowered.compile()
    self.step()  # warm up

  def step(self):
    """Runs the step once and waits for its output."""
    out = self._compiled(*self._arguments())
    if self._kind == "train":
      self._state, out = out
    return jax.block_until_ready(out)

  def profile(self, steps: int) -> dict[str, float]:
    return _profile_compiled(self.step, self._compiled.as_text(), steps)


# ---------------------------------------------------------------------------------------------
# The reference


def _reference_modules(reference: pathlib.Path):
  try:
    torch = importlib.import_module("torch")
  except ImportError as error:
    raise app.UsageError(
      "--reference needs PyTorch: pip install torch --index-url "
      "https://download.pytorch.org/whl/cpu"
    ) from error
  if not (reference / "model" / "talkNetModel.py").is_file():
    raise app.UsageError(f"--reference={reference}: no model/talkNetModel.py (a CMDFD checkout?)")
  if str(reference) not in sys.path:  # once, though every --batch builds the reference again
    sys.path.insert(0, str(reference))
  return (
    torch,
    importlib.import_module("model.talkNetModel"),
    importlib.import_module("model.audio_net"),
    importlib.import_module("model.video_net"),
    importlib.import_module("loss_MTL"),
  )


class _ReferenceStep:
  """One of the reference's steps, in the interface of `_Avcd`."""

  def __init__(self, reference: "_Reference", kind: str):
    self._reference = reference
    self.step = reference.train_step if kind == "train" else reference.predict_step
    self.step()  # warm up

  def profile(self, steps: int) -> dict[str, float]:
    return self._reference.profile_step(self.step, steps)


class _Reference:
  """The reference's MTL_DDF pieces on the CPU with random weights, stepped as its loops do."""

  def __init__(self, reference: pathlib.Path, rows: int, length: int):
    torch, talknet, audio_net, video_net, loss_mtl = _reference_modules(reference)
    self.torch = torch
    torch.manual_seed(0)
    # The arguments MTL_DDF passes (model size, heads, layers, positions, inputs, FFN, dropout,
    # classes).
    self.model = talknet.talkNetModel()
    self.asr = audio_net.AudioNet(512, 8, 6, 2500, 321, 2048, 0.1, 40)
    self.vsr = video_net.VideoNet(512, 8, 6, 2500, 2048, 0.1, 40)
    for teacher in (self.asr, self.vsr):
      teacher.requires_grad_(False)
    self.loss_av = loss_mtl.lossAV()
    self.loss_metric = loss_mtl.MetricCont_Spea()
    self.modules = torch.nn.ModuleList(
      [self.model, self.asr, self.vsr, self.loss_av, self.loss_metric]
    )
    self.optim = torch.optim.Adam(self.modules.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    self.mfcc = torch.randn(rows, 4 * length, 13, generator=g)
    self.faces = torch.randint(0, 256, (rows, length, 112, 112), generator=g).float()
    self.stft = torch.rand(rows, 4 * length, 321, generator=g)
    self.lips = torch.randn(rows, length, 512, generator=g)
    self.labels = torch.randint(0, 2, (rows, length), generator=g)

  def _embeddings(self):
    audio_embed = self.model.forward_audio_frontend(self.mfcc)
    visual_embed = self.model.forward_visual_frontend(self.faces)
    audio_embed, visual_embed = self.model.forward_cross_attention(audio_embed, visual_embed)
    joint = self.model.forward_audio_visual_backend(audio_embed, visual_embed)
    return audio_embed, visual_embed, joint

  def train_step(self):
    """`MTL_DDF.train_network`'s body for one batch."""
    self.modules.train()
    self.modules.zero_grad()
    audio_embed, visual_embed, joint = self._embeddings()
    lip_audio, lip_video = self.asr(self.stft), self.vsr(self.lips)
    similarity, metric = self.loss_metric(
      lip_audio, audio_embed, lip_video, visual_embed, self.labels
    )
    frame_loss, *_ = self.loss_av(joint.reshape(-1, 256), self.labels.reshape(-1))
    (frame_loss + similarity + metric).backward()
    with self.torch.autograd.profiler.record_function("optimizer"):
      self.optim.step()

  def predict_step(self):
    """`MTL_DDF.evaluate_network`'s forward for one batch."""
    self.modules.eval()
    with self.torch.no_grad():
      return self.loss_av(self._embeddings()[2].reshape(-1, 256))

  @contextlib.contextmanager
  def module_ranges(self):
    """Every module's forward inside a profiler range named by its class."""
    ranges, handles = [], []

    def enter(module, _):
      ranges.append(self.torch.autograd.profiler.record_function(type(module).__name__))
      ranges[-1].__enter__()

    def leave(module, _, __):
      ranges.pop().__exit__(None, None, None)

    for module in self.modules.modules():
      handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
      yield
    finally:
      for handle in handles:
        handle.remove()

  def profile_step(self, step, steps: int) -> dict[str, float]:
    torch = self.torch
    with (
      self.module_ranges(),
      torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
      for _ in range(steps):
        step()
    events = prof.events()
    ranges = {id(e) for e in events if not e.name.startswith(("aten::", "autograd::"))}

    def path(event) -> tuple[str, ...]:
      names = []
      while event is not None:
        if id(event) in ranges:
          names.append(event.name)
        event = event.cpu_parent
      return tuple(reversed(names))

    # Forward ops by autograd sequence number: their backward goes to the same family.
    forward_family = {}
    for event in events:
      if event.sequence_nr >= 0 and event.name.startswith("aten::") and event.fwd_thread == 0:
        forward_family.setdefault(event.sequence_nr, reference_family(path(event)))
    families = collections.Counter()
    for event in events:
      ancestor, family = event, None
      while ancestor is not None and family is None:
        if ancestor.name.startswith("autograd::engine::evaluate_function"):
          family = forward_family.get(ancestor.sequence_nr, "other")
        ancestor = ancestor.cpu_parent
      family = family or reference_family(path(event))
      families[family] += event.self_cpu_time_total * 1e3  # microseconds -> ns
    return dict(families)


# ---------------------------------------------------------------------------------------------
# Table


@dataclasses.dataclass(frozen=True)
class Row:
  implementation: str
  step: str
  batch: str
  wall: float
  families: dict

  def ms(self) -> dict[str, float]:
    """Each family's milliseconds per step: its share of profiled time times the wall time."""
    total = sum(self.families.values()) or 1.0
    return {f: 1e3 * self.wall * self.families.get(f, 0.0) / total for f in FAMILIES}


def format_table(rows: list[Row]) -> str:
  header = "| family | " + " | ".join(f"{r.implementation} {r.step} {r.batch}" for r in rows)
  lines = [header + " |", "|---|" + "---:|" * len(rows)]
  per_row = [r.ms() for r in rows]
  for family in FAMILIES:
    if any(ms[family] >= 0.05 for ms in per_row):
      lines.append(f"| {family} | " + " | ".join(f"{ms[family]:,.1f}" for ms in per_row) + " |")
  lines.append(
    "| **step (wall, median)** | " + " | ".join(f"**{1e3 * r.wall:,.1f}**" for r in rows) + " |"
  )
  return "\n".join(lines)


AVCD_ROWS = (
  ("train, teachers in step", "configs/default.py", "train"),
  ("train, stored lips", "configs/fakeavceleb.py", "train"),
  ("predict", "configs/default.py", "predict"),
)


def _subjects(batch: str, reference: str | None) -> list[tuple[str, str, object]]:
  """(implementation, step, subject) for every step profiled at one B x T batch."""
  try:
    rows, length = (int(n) for n in batch.lower().split("x"))
  except ValueError:
    raise app.UsageError(f"--batch={batch}: expected BxT, e.g. 1x100") from None
  subjects = [
    ("avcd", label, _Avcd(config_path, kind, rows, length))
    for label, config_path, kind in AVCD_ROWS
  ]
  if reference:
    steps = _Reference(pathlib.Path(reference), rows, length)
    subjects += [
      ("reference", "train", _ReferenceStep(steps, "train")),
      ("reference", "eval forward", _ReferenceStep(steps, "predict")),
    ]
  return subjects


def define_flags() -> None:
  """The command line. Defined only when the module runs as a program: the tests import it beside
  `avcd.benchmarks.train_step`, whose flags have the same names, and absl flags are global."""
  flags.DEFINE_multi_string("batch", ["1x100"], "B x T batches to profile (repeatable).")
  flags.DEFINE_string(
    "reference", None, "A checkout of the reference repository: profile its steps too."
  )
  flags.DEFINE_integer("steps", 3, "Timed steps per row and round.", lower_bound=1)
  flags.DEFINE_integer(
    "rounds",
    3,
    "Rounds over all rows; a row's wall time is the median of its rounds' medians.",
    lower_bound=1,
  )
  flags.DEFINE_integer("profiled_steps", 3, "Steps run under the profiler.", lower_bound=1)
  flags.DEFINE_string("output", None, "Directory for step_profile.json and .md.")


def main(argv):
  args = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  rows = []
  for batch in args.batch:
    subjects = _subjects(batch, args.reference)
    # Rounds alternate the steps so that a slow spell of this shared machine hits all of them.
    walls = collections.defaultdict(list)
    for _ in range(args.rounds):
      for implementation, label, subject in subjects:
        seconds = []
        for _ in range(args.steps):
          started = time.perf_counter()
          subject.step()
          seconds.append(time.perf_counter() - started)
        walls[implementation, label].append(statistics.median(seconds))
    for implementation, label, subject in subjects:
      wall = statistics.median(walls[implementation, label])
      rows.append(Row(implementation, label, batch, wall, subject.profile(args.profiled_steps)))
      print(f"{implementation} {label} {batch}: {1e3 * wall:.1f} ms", flush=True)
  table = format_table(rows)
  print(table)
  if args.output:
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "step_profile.json").write_text(
      json.dumps([dataclasses.asdict(r) for r in rows], indent=1)
    )
    (output / "step_profile.md").write_text(table + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
