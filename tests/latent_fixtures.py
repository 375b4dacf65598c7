"""The fixtures the latent pipeline tests share (SD, SDXL, SD3, Flux): one torch thread per
module, seeded generators, and diffusers pipelines saved as folders and loaded back by diffcore.

A test module takes a fixture by importing it (pytest collects fixtures from a module's
namespace): ``one_thread`` is autouse; :func:`scheduler_fixtures` / :func:`flow_fixtures` build
the rest for a family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flow_tiny
import pytest
import sd_tiny
import torch

from diffcore.interop.diffusers import load_diffusers_pipeline
from diffcore.interop.latent import LatentPipeline

__all__ = ["flow_fixtures", "gen", "load_all", "one_thread", "saved_pipelines", "scheduler_fixtures"]

Folders = dict[str, tuple[Any, Path]]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Torch on one thread for the whole module (tiny models; the cores are shared)."""
    with flow_tiny.one_thread():
        yield


def gen(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed`` (one per call: diffusers and diffcore draw alike)."""
    return torch.Generator().manual_seed(seed)


def saved_pipelines(root: Path, build: Callable[..., Any], **extra: dict[str, Any]) -> Folders:
    """Scheduler name (every one of :data:`sd_tiny.SCHEDULERS`) -> (the diffusers pipeline
    ``build(root, sched=name)``, its ``save_pretrained`` folder); each ``extra`` name -> the same
    for ``build(root, **kwargs)``."""
    specs = {name: {"sched": name} for name in sd_tiny.SCHEDULERS} | extra
    out = {}
    for name, kwargs in specs.items():
        ref = build(root, **kwargs)
        out[name] = (ref, sd_tiny.save(ref, root / name))
    return out


def load_all(folders: Folders) -> dict[str, LatentPipeline]:
    """Every saved folder of :func:`saved_pipelines` loaded by diffcore."""
    return {name: load_diffusers_pipeline(folder) for name, (_, folder) in folders.items()}


def scheduler_fixtures(family: str, build: Callable[..., Any], **extra: dict[str, Any]) -> tuple[Any, Any]:
    """The module fixtures of a UNet family (``sd``, ``sdxl``): ``folders`` (:func:`saved_pipelines`
    of ``build``, one per scheduler, plus ``extra``) and ``loaded`` (those folders loaded by
    diffcore). Assign them to those names: ``folders, loaded = scheduler_fixtures("sd", ...)``."""

    @pytest.fixture(scope="module", name="folders")
    def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
        return saved_pipelines(tmp_path_factory.mktemp(family), build, **extra)

    @pytest.fixture(scope="module", name="loaded")
    def loaded(folders: Folders) -> dict[str, LatentPipeline]:
        return load_all(folders)

    return folders, loaded


def flow_fixtures(family: str, build: Callable[[Path], dict[str, Any]], pipeline_class: str) -> tuple[Any, ...]:
    """The module fixtures of a flow family (``sd3``, ``flux``): ``components`` (the tiny parts,
    ``build(folder)``), ``family`` (the diffusers ``pipeline_class`` of them), ``folder`` (that
    pipeline saved) and ``pipe`` (the folder loaded by diffcore). Assign them to those names in
    the test module, e.g. ``components, sd3, folder, pipe = flow_fixtures("sd3", ...)``."""

    @pytest.fixture(scope="module", name="components")
    def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        return build(tmp_path_factory.mktemp(family))

    @pytest.fixture(scope="module", name=family)
    def reference(components: dict[str, Any]) -> Any:
        return getattr(sd_tiny.diffusers, pipeline_class)(**components)

    @pytest.fixture(scope="module", name="folder")
    def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return sd_tiny.save(request.getfixturevalue(family), tmp_path_factory.mktemp(f"{family}_folder"))

    @pytest.fixture(scope="module", name="pipe")
    def pipe(folder: Path) -> LatentPipeline:
        return load_diffusers_pipeline(folder)

    return components, reference, folder, pipe
