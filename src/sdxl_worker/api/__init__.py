"""The HTTP server (``python handler.py --serve``, or SERVE=http): RunPod load-balancing endpoints,
the native job API with Server-Sent Events, and OpenAI's Images API, on the same job code as the
queue worker. docs/http.md is the guide; docs/security.md has its threat model."""
