"""Interoperability with other diffusion libraries: ``diffcore.interop.diffusers`` loads diffusers
UNet2DModel checkpoints and scheduler configs (optional extra ``pip install 'diffcore[diffusers]'``;
diffusers is imported only when a model is built)."""
