"""Models that are not byte models, trained on the same data as omnibyte's tasks to compare with.

They sit at the level of ``omnibyte.apps``: they read records through ``omnibyte.data`` and
score with the apps' measures, and never import ``omnibyte.train`` or ``omnibyte.cli``.
"""
