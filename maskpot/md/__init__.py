"""Molecular dynamics with learned potentials: runners, stability guard, analysis."""
