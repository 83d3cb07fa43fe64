"""The frozen ASR/VSR teachers: the one front door of a student run (`setup.prepare`), loading
them (`frozen`), caching their posteriors (`cache`), training them (`training`)."""
