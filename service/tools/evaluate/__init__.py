"""Closed-loop evaluation on simulated time: the real pipeline guiding a simulated novice.

``simdevice`` — the simulated probe (settings, limits, set_param read-back) and the oracle model;
``episode`` — one episode in one arm (guided, unguided, oracle); ``metrics`` — pure scoring and
aggregation; ``plots`` — PNG figures; ``runner`` — episodes over worker processes.
See docs/evaluation.md.
"""
