r"""The claim study: does correlation distillation help on lip-sync generators a detector never saw?

    python -m avcd.studies.generalisation --stage=1 --workdir=runs/generalisation

runs what stage 1 still lacks and rewrites docs/generalisation/results.md from every results
file under docs/generalisation/results/ (committed, so the study continues on any machine;
`--report_only` skips the runs). docs/generalisation.md holds the pre-registration: rows,
endpoint, contrasts, the number of seed pairs and the decision rule. Stages:

  recipe  choose one training recipe for every row on the validation AUC of the trained
          methods only (the test split is not even scored)
  pilot   4 paired seeds of the stage 1 rows; prints only the SD of the paired differences of the
          primary endpoint and the number of pairs it implies (blind to the endpoint's mean)
  1       corpus 0: R0, R2, R3, R5, R2H over the pre-registered seeds, and the teachers-only row
  2       corpus 0: R1, R4; corpus 1: every row; corpus 0 with a weaker VSR teacher: R1, R2

Rows: R0 frame CE; R1 + correlation distillation; R2 + the joint-modal contrastive (metric) loss
(the paper's method); R3 CE + a sync-only auxiliary (the distillation BCE against timing-only
targets, no teachers); R4 R2 with the centred metric loss (losses.metric_loss); R5 CE + phoneme
heads, R2H R2 + phoneme heads (the amendment of 2026-12-07 in docs/generalisation.md).

Every run trains the config's student from scratch on the corpus's training split (real, ls_a,
desync, talking_head, voice_swap), then scores the validation split (trained methods) and the test
split (200 clips of every method, 1400 real, speakers never seen). Its results file holds the
per-method AUCs, the gate (every trained method >= 95% test AUC), the recipe, the commit, the
time taken and every test clip's score, which the report's bootstrap resamples by speaker.

Modules: `design` (the rows, runs and stages, and each run's config), `runs` (training and
scoring the runs, writing their results files), `report` (results.md from the results files
alone), `__main__` (the flags).
"""
