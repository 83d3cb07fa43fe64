"""TFDS builders of the manifest corpora: fakeavceleb, cmdfd and the generic av_manifest.

Importing a builder's module registers its name with TFDS. Prepare them with
`data_pipelines.prepare` (`avcd prepare`); docs/data.md has the commands and the on-disk layout.
"""
