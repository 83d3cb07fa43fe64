"""The method's three losses, on arrays and masks only (float32 throughout).

Per clip b and valid frame t:
  * frame cross-entropy of the student's frame logits against the frame's label: the clip label
    on every frame (the reference), or the frame labels of partially forged clips;
  * correlation distillation: teachers' per-frame posteriors p (ASR) and q (VSR) give a divergence
    D_t and a soft target s_t = 1 - D_t for the scaled cosine c_t = (cos(a_t, v_t) + 1) / 2 of the
    student's audio and visual embeddings, scored with binary cross-entropy;
  * joint-modal metric loss: d_b = ||s - c||_2 over the clip's frames, sigma_b = sigmoid(d_b);
    real clips pull sigma_b down, fakes push it above the margin.

Partially forged clips (frame labels that differ within a clip): the distillation target needs no
label (the teachers' disagreement is what should rise inside a forged segment), so it is the same
on every frame. The metric loss is taken per (clip, label) part instead of per clip: the distance
over the clip's real frames is pulled down and the one over its fake frames pushed up, so a
one-second forgery does not teach that the real seconds around it are fake. With clip labels
every clip is a single part, which is the reference's loss. Like the reference's, a part's
distance is a root of a sum over its frames, so it grows with the square root of the part's
length: a short forged part needs a larger per-frame gap to reach the margin than a long one.
Kept (not made a mean) so that clip labels give the reference's loss exactly.
The sync-only control of the generalisation study replaces distillation by the same cosine BCE
against targets that know timing only (`sync_loss`).

Beyond the paper, optional phoneme heads (model.phoneme_classes) read each encoder's per-frame
output and learn the teacher of their modality: soft cross-entropy of the audio head to the ASR
posteriors plus the visual head's to the VSR posteriors, mean over valid frames (`phoneme_loss`).
Without them the distillation gradient reaches the encoders only through the cosine, which is
near constant until the encoders already tell phonemes apart; the heads give each encoder its own
signal from the first step (README, "Faithfulness").
"""

import functools
import operator

import jax
import jax.numpy as jnp
import ml_collections

_LOG_RATIO_EPS = 1e-10  # the reference adds it to the probability ratio inside the log

# The weighted terms of the total loss, in the order they are summed: the name each is logged
# under (`metric_name`; the step logs every `loss_*` part) and its weight field in config.loss.
# The total, the config checks and the log line read this list; a new term is computed in
# detector_losses, named here and given its weight in config_lib.
LOSS_TERMS = {
  "ce": "ce_weight",
  "bce": "distill_weight",
  "metric": "metric_weight",
  "sync": "sync_weight",
  "phoneme": "phoneme_weight",  # only with phoneme heads (model.phoneme_classes)
}


def metric_name(term: str) -> str:
  """The metric a loss term's batch value is logged as (loss_NAME; the total is `loss`)."""
  return f"loss_{term}"


def _weighted_total(terms: dict, cfg: ml_collections.ConfigDict) -> jax.Array:
  """sum of weight x value over the LOSS_TERMS in `terms` (keyed by metric_name), in their order."""
  return functools.reduce(
    operator.add,
    (
      cfg[weight] * terms[metric_name(term)]
      for term, weight in LOSS_TERMS.items()
      if metric_name(term) in terms
    ),
  )


def symmetric_kl_mean(p: jax.Array, q: jax.Array) -> jax.Array:
  """The reference's "JS": 1/2 [mean_k p log(p/q + eps) + mean_k q log(q/p + eps)] (not a JS)."""
  kl_pq = jnp.mean(p * jnp.log(p / q + _LOG_RATIO_EPS), axis=-1)
  kl_qp = jnp.mean(q * jnp.log(q / p + _LOG_RATIO_EPS), axis=-1)
  return 0.5 * (kl_pq + kl_qp)


def jensen_shannon_bits(p: jax.Array, q: jax.Array) -> jax.Array:
  """True Jensen-Shannon divergence in bits (log base 2), so 0 <= D <= 1."""
  m = 0.5 * (p + q)
  kl = lambda a: jnp.sum(jnp.where(a > 0, a * (jnp.log(a) - jnp.log(m)), 0.0), axis=-1)
  return 0.5 * (kl(p) + kl(q)) / jnp.log(2.0)


DIVERGENCES = {"symmetric_kl_mean": symmetric_kl_mean, "jensen_shannon": jensen_shannon_bits}


def soft_target(asr_probs: jax.Array, vsr_probs: jax.Array, divergence: str) -> jax.Array:
  """s_t = 1 - D(p_t, q_t) for (B, T, K) posteriors -> (B, T). Not clamped, as the reference."""
  if divergence not in DIVERGENCES:
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {sorted(DIVERGENCES)}")
  p, q = asr_probs.astype(jnp.float32), vsr_probs.astype(jnp.float32)
  return 1.0 - DIVERGENCES[divergence](p, q)


def scaled_cosine(audio: jax.Array, visual: jax.Array) -> jax.Array:
  """(cos(a_t, v_t) + 1) / 2 for (B, T, D) embeddings, normalised as F.normalize +
  cosine_similarity."""
  a = audio.astype(jnp.float32)
  v = visual.astype(jnp.float32)
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(v, axis=-1)
  cosine = jnp.sum(a * v, axis=-1) / jnp.maximum(norms, 1e-8)
  return (cosine + 1.0) / 2.0


def binary_cross_entropy(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Elementwise torch.nn.functional.binary_cross_entropy (logs clamped at -100)."""
  log_p = jnp.maximum(jnp.log(prediction), -100.0)
  log_not_p = jnp.maximum(jnp.log1p(-prediction), -100.0)
  return -(target * log_p + (1.0 - target) * log_not_p)


def frame_cross_entropy(frame_logits: jax.Array, frame_labels: jax.Array) -> jax.Array:
  """-log softmax(z_t)[y_t] for (B, T, 2) logits and (B, T) frame labels (or (B, 1) clip labels,
  the same on every frame) -> (B, T)."""
  log_probs = jax.nn.log_softmax(frame_logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, frame_labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def clip_distance(target: jax.Array, prediction: jax.Array, mask: jax.Array) -> jax.Array:
  """d_b = sqrt(sum over valid t of (s_t - c_t)^2), with a finite gradient at d_b = 0."""
  squared = jnp.sum(jnp.where(mask, jnp.square(target - prediction), 0.0), axis=1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


METRIC_FORMS = ("reference", "centred")


def metric_loss(
  distance: jax.Array, labels: jax.Array, margin: float, form: str = "reference"
) -> jax.Array:
  """Per clip: (1 - y) m(d)^2 + y max(0, margin - m(d))^2.

  'reference': m(d) = sigmoid(d), the authors' form. Since d >= 0, m(d) >= 1/2: a real clip's term
  never falls below 1/4 and, with the reference's margin of 1, no fake ever satisfies its term
  either, so the loss pushes every distance one way whatever the label. 'centred': m(d) =
  2 sigmoid(d) - 1 = tanh(d / 2), in [0, 1) with m(0) = 0, which both labels can satisfy when
  margin < 1.
  """
  if form not in METRIC_FORMS:
    raise ValueError(f"unknown metric loss form {form!r}; choose one of {METRIC_FORMS}")
  sigma = jax.nn.sigmoid(distance)
  if form == "centred":
    sigma = 2.0 * sigma - 1.0
  y = labels.astype(jnp.float32)
  return (1.0 - y) * jnp.square(sigma) + y * jnp.square(jnp.maximum(margin - sigma, 0.0))


def sync_loss(
  similarity: jax.Array, rolled_similarity: jax.Array, labels: jax.Array, mask: jax.Array
) -> jax.Array:
  """The sync-only control: BCE of the scaled cosine against 1 on every valid real frame ((B, T)
  frame `labels` 0), and against 0 on the same frames with the clip's audio rolled in time. Fake
  frames do not count.

  The targets know timing only, never content: what distillation's teacher targets add beyond
  them is the claim under test.
  """
  real_frames = mask & (labels == 0)
  weights = real_frames.astype(jnp.float32)
  terms = binary_cross_entropy(similarity, jnp.ones_like(similarity)) + binary_cross_entropy(
    rolled_similarity, jnp.zeros_like(rolled_similarity)
  )
  return jnp.sum(terms * weights) / jnp.maximum(2.0 * jnp.sum(weights), 1.0)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
  """-sum_k q_k log softmax(z)_k for (B, T, K) logits and target distributions -> (B, T)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(target_probs.astype(jnp.float32) * log_probs, axis=-1)


def phoneme_loss(
  audio_logits: jax.Array,
  visual_logits: jax.Array,
  asr_probs: jax.Array,
  vsr_probs: jax.Array,
  mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """(audio head, visual head) soft cross-entropies to the ASR and VSR posteriors, each the mean
  over the batch's valid frames; the posteriors are targets (no gradient)."""
  audio = soft_cross_entropy(audio_logits, jax.lax.stop_gradient(asr_probs))
  visual = soft_cross_entropy(visual_logits, jax.lax.stop_gradient(vsr_probs))
  return _masked_frame_mean(audio, mask)[1], _masked_frame_mean(visual, mask)[1]


def _masked_frame_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-clip and whole-batch means of (B, T) values over valid frames."""
  weights = mask.astype(jnp.float32)
  per_clip = jnp.sum(values * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  batch = jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return per_clip, batch


def _metric_loss_by_part(
  target: jax.Array,
  similarity: jax.Array,
  mask: jax.Array,
  frame_labels: jax.Array,
  cfg: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
  """The metric loss over (clip, label) parts (module docstring): per clip the sum of its parts'
  terms, and the mean over the batch's parts."""
  per_clip, parts = jnp.zeros(mask.shape[:1], jnp.float32), 0
  for label in (0, 1):
    part = mask & (frame_labels == label)
    part_valid = jnp.any(part, axis=1)
    distance = clip_distance(target, similarity, part)
    part_loss = metric_loss(
      distance, jnp.full_like(distance, label), cfg.metric_margin, cfg.metric_form
    )
    per_clip += jnp.where(part_valid, part_loss, 0.0)
    parts += jnp.sum(part_valid)
  return per_clip, jnp.sum(per_clip) / jnp.maximum(parts, 1)


def detector_losses(
  student_out: dict,
  asr_probs: jax.Array,
  vsr_probs: jax.Array,
  labels: jax.Array,
  cfg: ml_collections.ConfigDict,
  rolled_embeds: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict]:
  """The weighted total loss and a dict of its parts, batch means and per-clip values.

  student_out: the Student's outputs (`audio_embed`, `visual_embed`, `frame_logits`, `mask`);
  asr_probs, vsr_probs: (B, T, K) teacher posteriors (no gradient flows into them);
  labels: (B,) clip labels or (B, T) frame labels (1 = fake); clip labels stand for every frame.
  Clips with no valid frame (batch filler) count nowhere.
  rolled_embeds: the (audio, visual) embeddings of the same clips with their audio rolled in
  time, for the sync-only control (`cfg.sync_weight`); None when that weight is 0.
  The batch CE and BCE average over all valid frames of the batch (the reference's mean over
  B x T frames); the metric loss averages over the batch's (clip, label) parts (module docstring),
  that is over valid clips when every clip has one label.
  """
  mask = student_out["mask"]
  # (B, 1) clip labels broadcast over the frames exactly as the reference indexes them.
  frame_labels = labels if labels.ndim == 2 else labels[:, None]
  target = jax.lax.stop_gradient(soft_target(asr_probs, vsr_probs, cfg.divergence))
  # Padded frames may hold zero embeddings (0/0 in the cosine's gradient) or a similarity of
  # exactly 0 or 1 (log 0): give them a harmless constant so no NaN leaks into valid gradients.
  valid = lambda x, fill: jnp.where(mask[..., None] if x.ndim == 3 else mask, x, fill)
  cosine = lambda audio, visual: valid(scaled_cosine(valid(audio, 1.0), valid(visual, 1.0)), 0.5)
  similarity = cosine(student_out["audio_embed"], student_out["visual_embed"])

  ce_clip, ce = _masked_frame_mean(
    frame_cross_entropy(student_out["frame_logits"], frame_labels), mask
  )
  bce_clip, bce = _masked_frame_mean(binary_cross_entropy(similarity, target), mask)
  distance = clip_distance(target, similarity, mask)
  if labels.ndim == 1:
    # Clip labels: the reference's per-clip loss, op for op. The per-part form below gives the
    # same values, but XLA compiles it to another float sequence, and the synthetic runs (a
    # plateau the student may or may not leave) change with the last bit.
    metric_clip = metric_loss(distance, labels, cfg.metric_margin, cfg.metric_form)
    clip_valid = jnp.any(mask, axis=1)
    metric_clip = jnp.where(clip_valid, metric_clip, 0.0)
    metric = jnp.sum(metric_clip) / jnp.maximum(jnp.sum(clip_valid), 1)
  else:
    metric_clip, metric = _metric_loss_by_part(target, similarity, mask, frame_labels, cfg)
  sync = jnp.zeros((), jnp.float32)
  if rolled_embeds is not None:
    sync = sync_loss(similarity, cosine(*rolled_embeds), frame_labels, mask)

  terms = {
    metric_name("ce"): ce,
    metric_name("bce"): bce,
    metric_name("metric"): metric,
    metric_name("sync"): sync,
  }
  total = _weighted_total(terms, cfg)
  if cfg.phoneme_weight > 0:
    # Only then: without heads the step's program stays the paper's, output for output.
    audio_phonemes, visual_phonemes = phoneme_loss(
      student_out["audio_phoneme_logits"],
      student_out["visual_phoneme_logits"],
      asr_probs,
      vsr_probs,
      mask,
    )
    phonemes = {metric_name("phoneme"): audio_phonemes + visual_phonemes}
    total = total + _weighted_total(phonemes, cfg)
    terms.update(
      phonemes,
      loss_phoneme_audio=audio_phonemes,  # its two parts, logged beside it
      loss_phoneme_visual=visual_phonemes,
    )
  parts = dict(
    loss=total,
    **terms,
    clip_loss_ce=ce_clip,
    clip_loss_bce=bce_clip,
    clip_loss_metric=metric_clip,  # the sum of the clip's part terms (0 for filler rows)
    clip_distance=distance,  # over all the clip's valid frames (the reference's d_b)
    soft_target=target,
    scaled_cosine=similarity,
  )
  return total, parts
