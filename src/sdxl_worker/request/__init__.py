"""What a job asks for: other APIs' dialects, the JSON Schema, and the checks on one request."""
