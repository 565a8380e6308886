"""Flows and their expressions, the runner, and the calls out to ML functions (HTTP,
retries, outbound tokens). It imports neither the edge nor the worker."""
