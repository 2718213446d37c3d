"""Evaluation per docs/PROTOCOL.md: metrics with 95 % CIs, calibration, figures, the run report, leaderboards.

Modules are imported on use (``pneumo.evaluate.metrics`` ...) so that importing the package stays cheap.
"""
