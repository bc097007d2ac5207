"""Conformance tests of the simulated exchange, written against a plain aiohttp client."""
