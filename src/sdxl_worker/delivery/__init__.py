"""The results out: encoded images, inline or uploaded to S3-compatible storage."""
