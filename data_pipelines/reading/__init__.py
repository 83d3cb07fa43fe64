"""Reading prepared corpora: split indexes, the Grain loader and what it applies to examples.

`rebuilt_split` makes a split's clips again from their media through data_pipelines.building,
the one way reading uses building.
"""
