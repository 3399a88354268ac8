"""Training: objectives (mask, denoise, energy_force), trainer, CLI."""

from maskpot.training.pretext_baseline import baseline_scores, baseline_vectors  # noqa: E402,F401
