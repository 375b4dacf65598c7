"""LatentPipeline: a latent text-to-image pipeline (SD, SDXL, SD3, Flux) on diffcore's samplers.

A diffusers pipeline folder's components, loaded by
:func:`diffcore.interop.diffusers.load_diffusers_pipeline`, sample through :meth:`diffcore.Pipeline.sample`
(every diffcore sampler, the fused CFG step, ``cuda_graph=True``) in latent space and decode with
the folder's VAE. The pipeline family (:mod:`diffcore.interop.families`) encodes prompts, gives
the latent shape and the scheduler. With the same noise (``generator`` or ``latents``) and the
scheduler's own sampler, :meth:`text2image`, :meth:`image2image` and :meth:`inpaint` equal
diffusers' ``output_type="pt"`` images: (B, 3, H, W) floats in [0, 1].

- image2image (SDEdit, Meng et al. 2022): the image's latents are noised to level
  ``steps - int(steps * strength)`` of the ``steps``-level plan and the run goes on from there.
- inpaint: with a 9-channel inpainting UNet, the mask and the masked image's latents are extra
  input channels; with any other model, after every step the known region is replaced by the
  image's latents noised to the level just reached (RePaint without resampling, Lugmayr et al.
  2022), the clean latents at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.interop.families.base import Cond, Family
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.sampling import resolve_sampler, sample, sampler_plan
from diffcore.timesteps import Plan

__all__ = ["LatentPipeline"]


def _prompt_list(prompt: str | Sequence[str] | None, embeds: Any) -> list[str]:
    if prompt is None:
        if embeds is None:
            raise ValueError("pass a prompt or prompt_embeds")
        return []
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    return prompts


def _images01(name: str, images: Tensor) -> Tensor:
    """``images`` (B, C, H, W) or (C, H, W) in [0, 1] as a float (B, C, H, W) batch."""
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() not in (3, 4):
        raise ValueError(
            f"{name} must be a float tensor (B, C, H, W) in [0, 1], got {getattr(images, 'shape', images)}"
        )
    images = images[None] if images.dim() == 3 else images
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} values must be in [0, 1] (like diffusers' output_type='pt'), got [{lo:.3g}, {hi:.3g}]"
        )
    return images


class LatentPipeline(Pipeline):
    """A latent diffusion pipeline: family (prompts, latents) + model + VAE + scheduler.

    ``scheduler_config``: the folder's scheduler config (dict); ``strict`` raises on scheduler
    options diffcore does not reproduce. :meth:`enable_model_cpu_offload` keeps only the running
    component on the execution device.
    """

    def __init__(
        self, family: Family, scheduler_config: dict[str, Any], *, strict: bool = False, source: str = ""
    ) -> None:
        self.family = family
        self.scheduler_config = dict(scheduler_config)
        self.strict = strict
        h, w = family.default_size()
        spec = family.scheduler_spec(self.scheduler_config, h, w, strict=strict)
        run = {"diffusers": {"pipeline": family.name, "source": source, "scheduler": spec.scheduler_class}}
        super().__init__(
            family.model,
            spec.schedule,
            make_parameterization(spec.prediction),
            run=run,
            sampler=spec.sampler,
            steps=family.default_steps,
        )
        self.offload: tuple[torch.device, torch.device] | None = None
        self.placements: list[tuple[str, str, tuple[str, ...]]] = []  # (component, device, others on it)
        family.use = self._use

    # ------------------------------------------------------------------ placement
    @property
    def components(self) -> dict[str, Any]:
        return self.family.components

    def _modules(self) -> dict[str, nn.Module]:
        return {k: v for k, v in self.components.items() if isinstance(v, nn.Module)}

    def to(self, device: str | torch.device) -> LatentPipeline:
        """Every component on ``device`` (turns offload off)."""
        self.offload = None
        for module in self._modules().values():
            module.to(device)
        return self

    def enable_model_cpu_offload(
        self, device: str | torch.device = "cuda", offload_device: str | torch.device = "cpu"
    ) -> LatentPipeline:
        """Keep every component on ``offload_device`` and move each to ``device`` only while it
        runs (text encoders, then the model, then the VAE); :attr:`placements` records the last
        256 runs as (component, its device, the components on that device then)."""
        self.offload = (torch.device(device), torch.device(offload_device))
        for module in self._modules().values():
            module.to(self.offload[1])
        return self

    def _use(self, name: str) -> Any:
        """Component ``name`` ready to run: with offload, on the execution device alone."""
        component = self.components[name]
        if self.offload is not None and isinstance(component, nn.Module):
            run_on, park = self.offload
            for other, module in self._modules().items():
                if other != name:
                    module.to(park)
            component.to(run_on)
            here = self.device_of(name)
            resident = tuple(sorted(k for k, m in self._modules().items() if _device_of(m) == here))
            del self.placements[: max(0, len(self.placements) - 255)]  # the latest runs only
            self.placements.append((name, str(here), resident))
        return component

    def device_of(self, name: str) -> torch.device:
        component = self.components[name]
        return _device_of(component) if isinstance(component, nn.Module) else torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self.offload[0] if self.offload is not None else self.device_of(self.family.model_key)

    # ------------------------------------------------------------------ the three tasks
    @torch.no_grad()
    def text2image(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        latents: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] of ``prompt`` (one per image). ``latents``: the start
        noise (B, C, H/f, W/f), else drawn from ``generator`` / ``seed``. Options: ``steps``,
        ``guidance_scale`` (> 1: classifier-free guidance), ``sampler``, ``seed``, ``generator``,
        ``prompt_embeds``, ``negative_prompt_embeds``, ``num_images_per_prompt``, ``eta``,
        ``sampler_options``, ``guidance_rescale``, ``cuda_graph``."""
        run = _Run(self, prompt, negative_prompt, height, width, options)
        noise = run.noise(latents)
        x = run.sample(self.family.pack(noise), start=0)
        return self.decode(self.family.unpack(x, run.height, run.width))

    @torch.no_grad()
    def image2image(
        self,
        image: Tensor,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        *,
        strength: float = 0.8,
        **options: Any,
    ) -> Tensor:
        """``image`` (B, 3, H, W) in [0, 1] redrawn towards ``prompt``: its latents noised to
        ``strength`` of the plan (0 < strength <= 1) and denoised; options as :meth:`text2image`."""
        images = _images01("image", image)
        run = _Run(self, prompt, negative_prompt, images.shape[-2], images.shape[-1], options)
        first = run.first_step(strength)
        init = self.encode(images, run.generator, run.batch)
        noise = run.noise(None)
        x = run.sample(self.family.pack(run.noised(init, noise, first)), start=first)
        return self.decode(self.family.unpack(x, run.height, run.width))

    @torch.no_grad()
    def inpaint(
        self,
        image: Tensor,
        mask: Tensor,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        *,
        strength: float = 1.0,
        **options: Any,
    ) -> Tensor:
        """``image`` (B, 3, H, W) in [0, 1] with the region where ``mask`` (B, 1, H, W), 1 =
        repaint, >= 0.5 after binarizing) is redrawn towards ``prompt``; ``strength`` < 1 starts
        from the noised image instead of pure noise. Options as :meth:`text2image`."""
        images = _images01("image", image)
        masks = _images01("mask", mask if mask.dim() != 2 else mask[None, None])
        if masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"mask shape {tuple(masks.shape)} must be (B, 1, H, W) like the image {tuple(images.shape)}"
            )
        masks = (masks >= 0.5).to(images.dtype)
        run = _Run(self, prompt, negative_prompt, images.shape[-2], images.shape[-1], options)
        first = run.first_step(strength)
        extra = self.family.concat_channels()
        init = self.encode(images, run.generator, run.batch) if (not extra or first > 0) else None
        noise = run.noise(None)
        start = noise if first == 0 else run.noised(_need(init), noise, first)
        h, w = run.latent[1:]
        small = _rows(F.interpolate(masks, size=(h, w)), run.batch).to(noise.device, noise.dtype)
        keep = (masks < 0.5).to(images.dtype)  # the masked region becomes 0 in [-1, 1]: gray
        # encoded for every model, as diffusers does: the same generator then feeds the same sampler noise
        masked = self.encode(images * keep + 0.5 * (1 - keep), run.generator, run.batch)
        if extra:
            run.add_concat(torch.cat([small, masked.to(small.dtype)], dim=1))
            x = run.sample(self.family.pack(start), start=first)
        else:
            known = _need(init).to(noise.device, noise.dtype)
            x = run.sample(self.family.pack(start), start=first, keep=(known, noise, small))
        return self.decode(self.family.unpack(x, run.height, run.width))

    def save(self, path: Any) -> Any:
        """Not a diffcore checkpoint: a latent pipeline stays the diffusers folder it came from."""
        raise ValueError(
            f"a LatentPipeline stays the diffusers folder it was loaded from ({self.run['diffusers']['source']!r}); "
            "Pipeline.save writes diffcore checkpoints only"
        )

    # ------------------------------------------------------------------ the VAE
    def encode(self, images: Tensor, generator: torch.Generator | None, batch: int) -> Tensor:
        """Scaled latents of ``images`` in [0, 1], repeated to ``batch`` rows (posterior draws from ``generator``)."""
        vae = self._use("vae")
        device = self.device_of("vae")
        return _rows(vae.encode(images.to(device) * 2 - 1, generator), batch)

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] of scaled latents."""
        vae = self._use("vae")
        images = vae.decode(latents.to(self.device_of("vae")))
        return (images.float() / 2 + 0.5).clamp(0, 1)


def _device_of(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _need(t: Tensor | None) -> Tensor:
    assert t is not None
    return t


def _rows(t: Tensor, batch: int) -> Tensor:
    """``t`` repeated to ``batch`` rows (one image for every prompt, or one per prompt)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"{t.shape[0]} images do not divide a batch of {batch} prompts")
    return t.repeat(batch // t.shape[0], *([1] * (t.dim() - 1)))


class _Run:
    """One call's settings: prompts encoded, sizes, scheduler spec, plan and noise source."""

    def __init__(
        self,
        pipe: LatentPipeline,
        prompt: str | Sequence[str] | None,
        negative_prompt: str | Sequence[str] | None,
        height: int | None,
        width: int | None,
        options: dict[str, Any],
    ) -> None:
        fam = pipe.family
        self.pipe = pipe
        opts = dict(options)
        per = int(opts.pop("num_images_per_prompt", 1))
        if per < 1:
            raise ValueError(f"num_images_per_prompt={per} must be >= 1")
        dh, dw = fam.default_size()
        self.height, self.width = int(height or dh), int(width or dw)
        self.latent = fam.latent_shape(self.height, self.width)
        self.steps = int(opts.pop("steps", None) or fam.default_steps)
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        scale = opts.pop("guidance_scale", None)
        self.guidance_scale = float(fam.default_guidance if scale is None else scale)
        guided = self.guidance_scale > fam.guidance_threshold
        embeds, neg_embeds = opts.pop("prompt_embeds", None), opts.pop("negative_prompt_embeds", None)
        prompts = _prompt_list(prompt, embeds)
        negatives = (
            None
            if negative_prompt is None
            else ([negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt))
        )
        prompts = [p for p in prompts for _ in range(per)]
        negatives = None if negatives is None else [p for p in negatives for _ in range(per)]
        self.cond, self.uncond = fam.encode_prompt(
            prompts,
            negatives,
            guidance=guided,
            height=self.height,
            width=self.width,
            prompt_embeds=embeds,
            negative_prompt_embeds=neg_embeds,
            **opts.pop("family_options", {}),
        )
        if embeds is not None and per > 1:  # precomputed embeddings: one row per prompt, repeated per image
            self.cond = _repeat(self.cond, per)
            self.uncond = None if self.uncond is None else _repeat(self.uncond, per)
        self.batch = _batch_of(self.cond)
        self.guided = guided
        seed, generator = opts.pop("seed", None), opts.pop("generator", None)
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed or 0))
        spec = fam.scheduler_spec(pipe.scheduler_config, self.height, self.width, strict=pipe.strict)
        self.kwargs: dict[str, Any] = spec.sample_kwargs()
        sampler = opts.pop("sampler", None)
        if sampler is not None and sampler != spec.sampler:
            self.kwargs = {k: v for k, v in self.kwargs.items() if k not in ("sampler_options", "eta")}
            self.kwargs["sampler"] = sampler
        for key in ("eta", "sampler_options", "guidance_rescale", "cuda_graph", "callback", "check_finite"):
            if key in opts:
                self.kwargs[key] = opts.pop(key)
        if opts:
            raise TypeError(f"unknown options {sorted(opts)}")
        fn = resolve_sampler(self.kwargs["sampler"])
        plan_opts = dict(self.kwargs.get("sampler_options") or {})
        self.plan: Plan = sampler_plan(
            fn, self.kwargs["schedule"], self.steps, self.kwargs["timestep_spacing"], plan_opts
        )

    def first_step(self, strength: float) -> int:
        """The plan level an image-conditioned run starts at: diffusers' ``steps - int(steps * strength)``."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r} must be in (0, 1] (1: start from pure noise)")
        first = self.pipe.family.first_step(self.steps, strength)
        if first >= self.plan.steps:
            raise ValueError(f"strength={strength} with steps={self.steps} leaves no step to run; raise either")
        return first

    def noise(self, latents: Tensor | None) -> Tensor:
        """Unit start noise (B, C, h, w): ``latents`` as given, else drawn from the generator."""
        shape = (self.batch, *self.latent)
        dtype = _dtype_of(self.cond)
        if latents is None:
            return torch.randn(shape, generator=self.generator, dtype=dtype).to(self.pipe.device)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        return latents.to(self.pipe.device, dtype)

    def noised(self, init: Tensor, noise: Tensor, first: int) -> Tensor:
        """``alpha * init + std * noise`` at plan level ``first`` (diffusers' ``add_noise``)."""
        alpha, std = self.plan.level(first)
        return alpha * init.to(noise.device, noise.dtype) + std * noise

    def add_concat(self, concat: Tensor) -> None:
        self.cond = {**self.cond, "concat": concat}
        if self.uncond is not None:
            self.uncond = {**self.uncond, "concat": concat}

    def sample(self, state: Tensor, *, start: int, keep: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """The sampler run from plan level ``start`` (``state``: unit noise at 0, else the state
        there); ``keep`` = (known
        latents, their noise, mask) pastes the known region back after every step."""
        kwargs = dict(self.kwargs)
        if keep is not None and kwargs.get("cuda_graph"):
            raise ValueError(
                "cuda_graph=True cannot inpaint with a model without inpainting channels: the known region is "
                "pasted back after every step on the host; use cuda_graph=False or a 9-channel inpainting UNet"
            )
        if keep is not None:
            kwargs["callback"] = _Paste(self.plan, *keep, kwargs.get("callback"), self.pipe.family)
        self.pipe._use(self.pipe.family.model_key)  # placed; Pipeline.sample calls it
        return sample(
            self.pipe.call_model,
            state,
            steps=self.steps,
            start=start,
            cond=self.cond,
            uncond=self.uncond,
            guidance_scale=self.guidance_scale if self.guided else None,
            generator=self.generator,
            **kwargs,
        )


class _Paste:
    """A sampler callback that replaces the known region (mask 0) by the known latents noised
    to the level just reached; clean at the end."""

    def __init__(self, plan: Plan, known: Tensor, noise: Tensor, mask: Tensor, inner: Any, family: Family) -> None:
        self.plan, self.known, self.noise, self.inner, self.family = plan, known, noise, inner, family
        self.keep = 1 - mask
        self.last = float(plan.sigmas[-1])

    def __call__(self, info: dict[str, Any]) -> None:
        x, sigma = info["x"], float(info["sigma"])
        if sigma <= self.last or self.plan.state is None:
            target = self.known
        else:
            alpha, std = self.plan.state(torch.tensor([sigma], dtype=torch.float64))
            target = float(alpha[0]) * self.known + float(std[0]) * self.noise
        h, w = self.known.shape[-2:]
        latents = self.family.unpack(x, h * self.family.downsample, w * self.family.downsample)
        mixed = self.keep * target + (1 - self.keep) * latents
        x.copy_(self.family.pack(mixed))
        if self.inner is not None:
            self.inner(info)


def _repeat(cond: Cond, per: int) -> Cond:
    return {k: v.repeat_interleave(per, dim=0) if isinstance(v, Tensor) else v for k, v in cond.items()}


def _batch_of(cond: Cond) -> int:
    for v in cond.values():
        if isinstance(v, Tensor):
            return int(v.shape[0])
    raise ValueError("the encoded prompts hold no tensor")


def _dtype_of(cond: Cond) -> torch.dtype:
    for v in cond.values():
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.dtype
    return torch.float32
