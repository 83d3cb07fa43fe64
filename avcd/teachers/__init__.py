"""The frozen ASR/VSR teachers: loading them, training them, caching their posteriors."""
