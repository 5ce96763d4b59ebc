"""Survey recipes beside DiffusionAD (ARCHITECTURE §8): AdvRAD one-shot denoising, DTE diffusion
time estimation, AnoDDPM partial diffusion with simplex noise. Each trains on good images only
and exports with the runtime's contract (manifest `method` names the recipe)."""

RECIPES = ("advrad", "anoddpm", "dte")
