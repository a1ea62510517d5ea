"""The pipeline's stages, one module each: encode, latents, schedule, denoise, decode."""
