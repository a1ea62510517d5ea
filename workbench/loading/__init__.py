"""Loading real checkpoints from the layouts users have (ComfyUI files, diffusers folders, HF cache)."""
