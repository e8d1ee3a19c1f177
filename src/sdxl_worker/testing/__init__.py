"""What the tests and the benchmarks both build with: loopback HTTP servers, hostile files, tiny LoRAs.

Never imported by the worker itself.
"""
