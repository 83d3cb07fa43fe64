"""TFDS builders of the prepared corpora: fakeavceleb, cmdfd and the generic av_manifest (from
manifest CSVs), lavdf and avdeepfake1m (from their own metadata JSON).

Importing a builder's module registers its name with TFDS. Prepare them with
`data_pipelines.building.prepare` (`avcd prepare`); docs/data.md has the commands and the on-disk
layout.
"""
