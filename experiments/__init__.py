"""Research experiments (not part of the installed package): the pretraining comparison driver
``compare_pretraining.py`` and its modules. Run from the repository root, either as
``python experiments/compare_pretraining.py ...`` or ``python -m experiments.compare_pretraining ...``.
"""
