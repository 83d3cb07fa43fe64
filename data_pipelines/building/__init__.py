"""Building corpora: from manifests or a corpus's own metadata to prepared TFDS datasets.

`prepare` is what `avcd prepare` runs; `corpora/` holds each corpus's rules and builder, the
modules here the machinery they share. Nothing here imports data_pipelines.reading.
"""
