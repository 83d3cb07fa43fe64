"""avcd convert --mtl=best.model --output=DIR
avcd convert [--talknet=pretrain_TalkSet.model] [--asr=audio-only.pt --vsr=video-only.pt
             [--vsr-frontend=visual_frontend.pt]] --output=DIR

Converts the authors' PyTorch weights into an avcd model checkpoint (see avcd/porting/convert.py).
"""

from absl import app, flags

_MTL = flags.DEFINE_string(
  "mtl", None, "The authors' MTL_DDF state dict (best.model): student and both teachers."
)
_TALKNET = flags.DEFINE_string("talknet", None, "TalkNet's pretrain_TalkSet.model: the student.")
_ASR = flags.DEFINE_string("asr", None, "deep_avsr's audio-only.pt: the ASR teacher.")
_VSR = flags.DEFINE_string("vsr", None, "deep_avsr's video-only.pt: the VSR teacher.")
_VSR_FRONTEND = flags.DEFINE_string(
  "vsr-frontend", None, "deep_avsr's visual_frontend.pt: the VSR teacher's lip-feature frontend."
)
_OUTPUT = flags.DEFINE_string("output", None, "New directory for the avcd model checkpoint.")
flags.mark_flags_as_required(["output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from avcd.porting import convert  # pylint: disable=g-import-not-at-top

  # A ConvertError or WeightMappingError becomes one line and exit status 1 (avcd.cli).
  sources = convert.convert(
    output=_OUTPUT.value,
    mtl=_MTL.value,
    talknet=_TALKNET.value,
    asr=_ASR.value,
    vsr=_VSR.value,
    vsr_frontend=_VSR_FRONTEND.value,
  )
  output = _OUTPUT.value
  print(f"wrote {output}:")
  for item, files in sources.items():
    print(f"  {item} from {', '.join(files)}")
  if "student" in sources:
    print(
      f"train from it: avcd train ... --config.train.init_from={output}\n"
      f"evaluate it:   avcd eval ... --checkpoint={output}"
    )
  if "teachers" in sources:
    use_frontend = bool(_VSR_FRONTEND.value)
    print(
      f"use teachers:  avcd train ... --config.teachers.checkpoint={output} "
      f"--config.teachers.vsr.use_frontend={use_frontend}"
    )
    if not use_frontend:
      print("               (without a frontend the VSR teacher reads the corpus's lip features)")


if __name__ == "__main__":
  app.run(main)
