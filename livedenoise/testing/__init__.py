"""Test helpers: detectors, subscribers and daemons on loopback, shipped as a pytest plugin."""
