"""RePaint inpainting (Lugmayr et al. 2022): an unconditional model fills the masked pixels.

After every reverse step the known region is replaced by the input noised to the level reached,
and every ``jump_length`` steps the state is noised back up and denoised again (``resample``
times): :func:`repaint_schedule` is that walk over the plan's levels, :func:`repaint` runs it with
the sampler's own coefficient program and the fused forward-noise op. Images are (B, C, H, W) in
[-1, 1]; masks are 1 where a pixel is missing. The ``translate`` task
(:mod:`diffcore.tasks.img2img`) runs it on files with ``--mode inpaint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.ops.philox import INIT_NOISE_OFFSET, REPAINT_JUMP_OFFSET, REPAINT_KNOWN_OFFSET, REPAINT_START_OFFSET
from diffcore.parameterization import Parameterization
from diffcore.pipeline import Pipeline
from diffcore.sampling import resolve_sampler
from diffcore.schedules import Schedule
from diffcore.tasks.inputs import check_images, check_int, check_mask, check_repaint_walk
from diffcore.timesteps import Plan, make_plan

__all__ = ["repaint", "repaint_schedule"]


Model = Pipeline | Callable[..., Tensor]


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[tuple[str, int]]:
    """RePaint's time travel (Lugmayr et al. 2022, Alg. 1 and sec. 4.2) over plan levels 0..steps.

    ``("down", i)``: a reverse step from level i to i+1; ``("up", i)``: forward noising from level
    i+1 back to i. Every ``jump_length`` steps (except the last stretch) the walk jumps back
    ``jump_length`` levels, ``resample - 1`` times, so those levels are denoised ``resample`` times.
    A walk past :data:`~diffcore.tasks.inputs.MAX_REPAINT_STEPS` steps is refused before it is built.
    """
    check_repaint_walk(steps, jump_length, resample)
    jumps = {t: resample - 1 for t in range(0, steps - jump_length, jump_length)}
    walk: list[tuple[str, int]] = []
    t = steps  # steps still to go; plan level = steps - t
    while t >= 1:
        t -= 1
        walk.append(("down", steps - t - 1))
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                walk.append(("up", steps - t))
    return walk


def _one_step_program(pipe: Pipeline, sampler: str, steps: int, timestep_spacing: str) -> tuple[Plan, Any]:
    """The plan and coefficient program of a sampler that takes one model call per step and
    keeps no history (RePaint interleaves its steps with pasting the known region)."""
    fn = resolve_sampler(sampler)
    if not hasattr(fn, "program"):
        raise ValueError(f"repaint needs a coefficient-program sampler (e.g. 'ddpm'); {sampler!r} is not one")
    plan = make_plan(pipe.schedule, steps, timestep_spacing, getattr(fn, "plan_style", "karras"))
    program = fn.program(plan)
    if program.slots or len(program.steps) != plan.steps:
        raise ValueError(
            f"repaint runs the sampler one step at a time; {sampler!r} keeps history or takes several "
            "model calls per step: use ddpm, ddim or euler_ancestral"
        )
    return plan, program


def _noise_table(plan: Plan, like: Tensor) -> Tensor:
    """One :func:`~diffcore.ops.forward_noise` table (columns 0-1, the state, are used): row i
    noises clean data to the level step i lands on, row n noises it to the start level, row
    n+1+i takes a state from the level step i lands on back to the level it started from
    (RePaint's jump: ``x_t = (alpha_t / alpha_s) x_s + sqrt(std_t^2 - (alpha_t / alpha_s)^2 std_s^2) z``)."""
    n = plan.steps
    rows = [[*plan.target(i), 0.0, 0.0] for i in range(n)] + [[*plan.level(0), 0.0, 0.0]]
    for i in range(n):
        (a_to, s_to), (a_from, s_from) = plan.level(i), plan.target(i)
        ratio = a_to / a_from
        rows.append([ratio, max(s_to**2 - (ratio * s_from) ** 2, 0.0) ** 0.5, 0.0, 0.0])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


@torch.no_grad()
def repaint(
    pipe_or_model: Model,
    images: Tensor,
    mask: Tensor | str,
    *,
    jump_length: int = 10,
    resample: int = 5,
    steps: int = 50,
    sampler: str = "ddpm",
    timestep_spacing: str = "trailing",
    schedule: str | Schedule | None = None,
    prediction: str | Parameterization | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    resize: bool = False,
    sample_index: int = 0,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022): fill the pixels where ``mask`` is 1 with an unconditional model.

    The sampler's own program runs one step at a time; after each reverse step the known region
    is set to the input noised to the level reached, and the resampling jumps noise the state
    forward (:func:`_noise_table`), both with the fused forward-noise op. About ``steps *
    resample`` model calls. ``sampler`` must be single-step (``ddpm``, ``ddim``, ``euler_ancestral``,
    ...). The known pixels of the result equal the input's exactly. With ``seed`` (default 0) row i's
    noise is keyed by (seed, ``sample_index`` + i): no batch dependence. Returns (B, C, H, W) in [-1, 1].
    """
    from diffcore.samplers.program import Program, run_program

    pipe = Pipeline.wrap(pipe_or_model, schedule, prediction)
    x_known = check_images(images, pipe.shape, resize=resize).to(pipe.device)
    keep = check_mask(mask, x_known, resize=resize) == 0
    steps, jump_length, resample = (
        check_int(k, v) for k, v in (("steps", steps), ("jump_length", jump_length), ("resample", resample))
    )
    if jump_length > steps:
        raise ValueError(f"jump_length={jump_length} must be <= steps={steps}")
    ops.check_noise_source(seed, generator)
    plan, program = _one_step_program(pipe, sampler, steps, timestep_spacing)
    cond, uncond = pipe.conditioning(x_known.shape[0], class_labels=class_labels, guidance_scale=guidance_scale)
    denoiser = pipe.denoiser(
        timestep_dtype=plan.timestep_dtype,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        sample_index=sample_index,
    )
    table, n, walk = _noise_table(plan, x_known), plan.steps, repaint_schedule(plan.steps, jump_length, resample)
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    seeds: list[int] = torch.randint(0, 2**62, (len(walk),), generator=g).tolist() if generator is None else []

    def noised(source: Tensor, row: int, k: int, offset: int) -> Tensor:
        if generator is not None:
            z = torch.randn(source.shape, generator=generator, dtype=source.dtype).to(source.device)
        else:
            z = ops.philox_noise_like(source, seeds[k], offset, sample_index=sample_index)
        t = torch.full((source.shape[0],), row, dtype=torch.long, device=source.device)
        return ops.forward_noise(source, z, t, table)[0]

    if generator is not None:  # torch RNG (as before keyed noise): the start from a generator seeded by ``seed``
        x = torch.randn(x_known.shape, generator=g, dtype=x_known.dtype).to(x_known.device)
    else:
        x = ops.philox_noise_like(x_known, 0 if seed is None else seed, INIT_NOISE_OFFSET, sample_index=sample_index)
    x = x * plan.init_scale
    x = torch.where(keep, noised(x_known, n, 0, REPAINT_START_OFFSET), x)
    for k, (direction, i) in enumerate(walk):
        if direction == "down":
            step = Program(steps=[program.steps[i]], slots=0)
            x = run_program(denoiser, x, step, generator=generator, seed=seeds[k] if seeds else None)
            x = torch.where(keep, x_known if i + 1 == n else noised(x_known, i, k, REPAINT_KNOWN_OFFSET), x)
        else:
            x = noised(x, n + 1 + i, k, REPAINT_JUMP_OFFSET)
    return torch.where(keep, x_known, x.clamp(-1, 1))
