"""The per-op profile: every op lands in the family of the layer it belongs to, and a real step's
profile accounts for its layers."""

import pytest

from avcd.benchmarks import step_profile
from avcd.models import visual
from avcd.training import losses

STUDENT = "jit(update_fn)/jvp(Student)/Student/Student.encode"


def test_nested_events_count_once():
  events = [(0, 100, "outer"), (10, 30, "inner"), (50, 20, "inner"), (200, 5, "next")]
  assert step_profile._self_times(events) == {"outer": 50, "inner": 50, "next": 5}


def test_opcode_and_operands_after_plain_and_tuple_shapes():
  assert step_profile._instruction("f32[2,3]{1,0} fusion(%a, %b.1), kind=kLoop, calls=%f") == (
    "fusion",
    ("a", "b.1"),
  )
  assert step_profile._instruction(
    "(f32[2]{0}, s32[2]{0}) reduce-window(%a, %c), window={size=3}, to_apply=%max"
  ) == ("reduce-window", ("a", "c"))


def test_intervals_covered_once():
  assert step_profile._union_ns([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25


HLO = """\
%fused_bn (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %m = f32[8]{0} multiply(%p, %p), metadata={op_name="jit(f)/Student/MaskedBatchNorm/mul"}
}

%fused_conv (p: f32[8], w: f32[3]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %w = f32[3]{0} parameter(1)
  %a = f32[8]{0} add(%p, %p), metadata={op_name="jit(f)/Student/AttentionLayer/add"}
  ROOT %c = f32[8]{0} convolution(%a, %w), metadata={op_name="jit(f)/Student/TemporalBlock/Conv/c"}
}

ENTRY %main (x: f32[8], w: f32[3]) -> f32[2] {
  %x = f32[8]{0} parameter(0)
  %w = f32[3]{0} parameter(1)
  %bn = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_bn
  %split = f32[2]{0} reduce-window(%bn, %x), window={size=4}, to_apply=%fused_bn
  %conv = f32[8]{0} fusion(%bn, %w), kind=kCustom, calls=%fused_conv
  ROOT %copy = f32[2]{0} copy(%split)
}
"""


def test_a_fusion_goes_to_its_heaviest_op_and_xla_made_ops_to_their_producer():
  instructions, computations = step_profile._parse_hlo(HLO)
  family = lambda name: step_profile.thunk_family(name, instructions, computations)
  assert family("conv") == "temporal convs"  # the convolution outweighs the add fused with it
  assert family("bn") == "BatchNorm"
  assert family("split") == "BatchNorm"  # a reduction XLA split off the BatchNorm's statistics
  assert family("copy") == "BatchNorm"  # two steps back
  assert family("x") == "other"


@pytest.mark.parametrize(
  "op_name, opcode, family",
  [
    (
      f"{STUDENT}/VisualEncoder/VisualFrontend/Conv/conv_general_dilated",
      "convolution",
      "space-time stem (5x7x7)",
    ),
    (
      f"{STUDENT}/VisualEncoder/VisualFrontend/ResNetLayer/Conv/conv_general_dilated",
      "convolution",
      "visual ResNet 2D convs",
    ),
    (
      f"{STUDENT}/VisualEncoder/VisualFrontend/ResNetLayer/MaskedBatchNorm/mul",
      "multiply",
      "BatchNorm",
    ),
    (f"{STUDENT}/VisualEncoder/VisualFrontend/reduce_window_max", "reduce-window", "max pool"),
    (f"{STUDENT}/VisualEncoder/VisualFrontend/stack", "concatenate", step_profile.VISUAL_INPUT),
    (
      f"{STUDENT}/VisualEncoder/TemporalBlock/Conv/conv_general_dilated",
      "convolution",
      "temporal convs",
    ),
    (f"{STUDENT}/AudioEncoder/SEBlock/SqueezeExcite/Linear/dot_general", "dot", "SE blocks"),
    (f"{STUDENT}/AudioEncoder/SEBlock/Conv/conv_general_dilated", "convolution", "MFCC-side convs"),
    (
      "jit(update_fn)/jvp(Student)/Student/AttentionLayer/MultiHeadAttention/dot_general",
      "dot",
      "attention",
    ),
    (
      "jit(update_fn)/Teachers/VSRTeacher/VisualFrontend/ResNetLayer/Conv/conv_general_dilated",
      "convolution",
      "teachers",
    ),
    ("jit(update_fn)/augment/mul", "multiply", "augmentation"),
    ("jit(update_fn)/transpose(jvp(loss))/loss/log", "log", "loss"),
    ("jit(update_fn)/optimizer/sqrt", "sqrt", "optimizer update"),
    ("", "copy", "other"),
  ],
)
def test_avcd_ops_go_to_their_layer(op_name, opcode, family):
  assert step_profile.avcd_family(op_name, opcode) == family


@pytest.mark.parametrize(
  "path, family",
  [
    (("visualFrontend", "Sequential", "Conv3d"), "space-time stem (5x7x7)"),
    (("visualFrontend", "Sequential", "BatchNorm3d"), "BatchNorm"),
    (("visualFrontend", "Sequential", "MaxPool3d"), "max pool"),
    (("visualFrontend", "ResNet", "ResNetLayer", "Conv2d"), "visual ResNet 2D convs"),
    (("visualFrontend", "ResNet", "ResNetLayer", "ReLU"), "visual ResNet 2D convs"),
    (("visualFrontend", "Sequential", "ReLU"), step_profile.VISUAL_INPUT),
    (("visualFrontend", "ResNet", "AvgPool2d"), step_profile.VISUAL_INPUT),
    (("visualFrontend",), step_profile.VISUAL_INPUT),
    (("visualTCN", "Sequential", "DSConv1d", "Conv1d"), "temporal convs"),
    (("audioEncoder", "Sequential", "SEBasicBlock", "SELayer", "Linear"), "SE blocks"),
    (("audioEncoder", "Sequential", "SEBasicBlock", "Conv2d"), "MFCC-side convs"),
    (("attentionLayer", "MultiheadAttention"), "attention"),
    (("VideoNet", "TransformerEncoder"), "teachers"),
    (("MetricCont_Spea",), "loss"),
    (("optimizer",), "optimizer update"),
    ((), "other"),
  ],
)
def test_reference_ops_go_to_their_module(path, family):
  assert step_profile.reference_family(path) == family


def test_named_scopes_are_undone():
  call, detector_losses = visual.VisualFrontend.__call__, losses.detector_losses
  with step_profile.named_scopes():
    assert visual.VisualFrontend.__call__ is not call
    assert losses.detector_losses is not detector_losses
  assert visual.VisualFrontend.__call__ is call and losses.detector_losses is detector_losses


def test_a_predict_steps_profile_accounts_for_its_layers():
  families = step_profile._Avcd("configs/tiny.py", "predict", 2, 16).profile(steps=2)
  total = sum(families.values())
  for family in (
    "space-time stem (5x7x7)",
    "visual ResNet 2D convs",
    "temporal convs",
    "MFCC-side convs",
    "attention",
  ):
    assert families.get(family, 0) > 0, family
  assert families.get("other", 0) < 0.1 * total
  assert "optimizer update" not in families and "teachers" not in families
