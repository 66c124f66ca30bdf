"""The virtual bench: phantoms, B-mode physics, camera scene, simulated novice. Pure and seeded."""
