"""Shared test utilities: comparing a loaded warehouse with the sandbox's ground truth, running the real CLI."""
