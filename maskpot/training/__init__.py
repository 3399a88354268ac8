"""Training: objectives (mask, denoise, energy_force), trainer, CLI."""
