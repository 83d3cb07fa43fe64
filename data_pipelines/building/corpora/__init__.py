"""The prepared corpora, one module each: fakeavceleb, cmdfd and the generic av_manifest (from
manifest CSVs), lavdf and avdeepfake1m (from their own metadata JSON).

A corpus's module holds what is particular to it: where its lists are, how its rows are told
apart, and its TFDS builder. Importing the module registers the builder under its name with TFDS
and in registry.BUILDERS (what `avcd prepare` builds), and, for the corpora listed in manifest
CSVs, the rule that tells their rows (manifests.corpus_rows). Importing this package imports
every corpus module, so that both registries are complete once it is imported.

Prepare them with `data_pipelines.building.prepare` (`avcd prepare`); docs/data.md has the
commands and the on-disk layout.
"""

# FakeAVCeleb's before CMDFD's: manifests asks the corpora's row rules in the order they were
# registered, and FakeAVCeleb's rows carry marks of their own (a category directory, an ID ending
# '+A?V?') where CMDFD's only name a method folder, so a row with both is FakeAVCeleb's.
# isort: off
from data_pipelines.building.corpora import fakeavceleb, cmdfd  # noqa: F401

# isort: on
from data_pipelines.building.corpora import av_manifest, avdeepfake1m, lavdf, registry  # noqa: F401

BUILDERS = registry.BUILDERS
