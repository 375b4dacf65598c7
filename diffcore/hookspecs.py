"""Hook specifications for diffcore plugins.

Every ``register_*`` hook receives a ``register`` callback with the signature
``register(name: str, obj: object, *, override: bool = False) -> None``. Call it once
per object; registering a name that another plugin already registered is a
:class:`diffcore.plugins.PluginError` unless ``override=True`` is passed.
Implementations may accept fewer arguments than a spec, so specs only ever grow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from diffcore.cli import PluginCommands
    from diffcore.plugins import Register

hookspec = pluggy.HookspecMarker("diffcore")


@hookspec
def register_models(register: Register) -> None:
    """Register denoiser models.

    :param register: call ``register(name, factory)``; ``factory(**config)`` returns an
        ``nn.Module`` computing ``model(x, t_or_sigma, cond=None) -> Tensor``.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register noise schedules.

    :param register: call ``register(name, factory)``; ``factory(**options)`` (e.g.
        ``num_train_timesteps=1000``) returns a schedule: the noise level (alpha_bar or
        sigma) of every training timestep, or a continuous sigma range.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers.

    :param register: call ``register(name, sampler)``; ``sampler(denoiser, x, plan, *,
        generator=None, callback=None, **options)`` returns the final sample, same shape
        as ``x`` (the contract is in :mod:`diffcore.samplers.base`).
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks (generation, denoising, anomaly detection, ...).

    :param register: call ``register(name, task)``; ``task`` has ``name: str``, a
        ``Params`` dataclass and ``run(params) -> dict``; ``diffcore run NAME`` runs it.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets.

    :param register: call ``register(name, factory)``; ``factory(**options)`` returns a
        dataset of tensors scaled to [-1, 1].
    """


@hookspec
def register_text_encoders(register: Register) -> None:
    """Register text encoders for text-to-image conditioning.

    :param register: call ``register(name, factory)``; ``factory(**options)`` returns an
        ``nn.Module`` with ``dim: int`` mapping a list of prompts to ``(context, mask)``: token
        embeddings (B, L, dim) and a (B, L) bool mask of real tokens ("" = no tokens, the null
        prompt of classifier-free guidance).
    """


@hookspec
def register_autoencoders(register: Register) -> None:
    """Register autoencoders that move images to and from a latent space.

    :param register: call ``register(name, factory)``; ``factory(path, *, torch_dtype=None)``
        loads one from a local folder and returns an object with ``encode(images, generator=None)
        -> latents`` (images (B, C, H, W) in [-1, 1]; latents already scaled, ``(z - shift) *
        scale``), ``decode(latents) -> images`` and ``downsample: int``.
    """


@hookspec
def register_commands(cli: PluginCommands) -> None:
    """Add subcommands to the ``diffcore`` command line.

    :param cli: call ``cli.add_command(name, help)`` to get an ``argparse.ArgumentParser``,
        add arguments to it and ``parser.set_defaults(func=fn)`` where
        ``fn(args: argparse.Namespace) -> int | None`` returns the exit code; or call
        ``cli.add_task(name, task, help)`` to get a command built from a task's ``Params``
        dataclass that prints ``task.run(params)`` as JSON.
    """
