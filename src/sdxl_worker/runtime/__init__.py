"""Running the worker: start-up, the job loop, streaming, prefetch, logs, local runs."""
