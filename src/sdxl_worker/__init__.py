"""An SDXL serverless worker for RunPod: the package behind handler.py.

request -> (inputs, engine) -> delivery, driven by runtime; config and errors underneath.
docs/ARCHITECTURE.md draws the flow of one job through these packages.
"""
