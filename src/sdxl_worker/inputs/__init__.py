"""What a job points at: downloads, input images and masks, LoRA files, each bounded."""
