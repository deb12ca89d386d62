"""Helpers for tests, demos and benchmarks: throwaway servers, signed tokens.

Like ``kopf.testing``, this is part of the package so the demo and the
benchmarks can use it; nothing in the product imports it.
"""
