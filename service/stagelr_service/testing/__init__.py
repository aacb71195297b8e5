"""Test and benchmark helpers: a synthetic training job that needs no torch
(:mod:`.simulation`). The server never imports this package."""
