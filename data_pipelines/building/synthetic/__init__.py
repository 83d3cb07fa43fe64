"""The built-in synthetic corpus: procedural talking clips with known content, real and fake.

generator.py makes each clip from (SyntheticSpec, split, index); builder.py writes a spec's splits
as the TFDS dataset `synthetic_av` (ArrayRecord). The other modules draw one part each: the
phoneme language (phonemes.py), speakers (speakers.py), speech (voice.py), faces (face.py, with
mouth.py and shapes.py).
"""
