"""Shared mathematics: schedules, time grids, the denoiser protocol, counter-based noise, option checks."""
