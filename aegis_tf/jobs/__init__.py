"""Whole jobs behind the command line: each takes paths and settings, does the work,
writes its files atomically and returns a JSON-ready report."""
