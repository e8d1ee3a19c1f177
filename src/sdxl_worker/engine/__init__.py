"""The models and the denoising: plan, pipelines, schedulers, prompts, previews' x0, speed-ups."""
