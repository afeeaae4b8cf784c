"""``agegender bench``: speed and accuracy of our exported model next to the peer models in ``shared/peers``.

- :mod:`~agegender.benchmark.timing`: a careful wall-clock timer (warm-up, repeated runs, median and p90).
- :mod:`~agegender.benchmark.peers`: one adapter per peer model, each with its documented preprocessing.
- :mod:`~agegender.benchmark.run`: the whole bench, written as JSON and a Markdown table.
"""
