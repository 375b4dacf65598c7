"""Native extension build for diffcore (all metadata lives in pyproject.toml).

Builds ``diffcore._C`` from ``csrc/*.cpp`` (op schemas and shared checks) and
``csrc/cpu/*.cpp`` (CPU kernels), plus ``csrc/cuda/*.cu`` (CUDA kernels) when torch is a
CUDA build and nvcc is found. The extension is optional: when there are no sources,
torch is not importable, ``DIFFCORE_BUILD_NATIVE=0`` is set, or compilation fails,
the install still succeeds and diffcore uses its pure-Torch reference kernels.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

from setuptools import find_namespace_packages, setup
from setuptools.command.build_ext import build_ext as _SetuptoolsBuildExt

ROOT = os.path.dirname(os.path.abspath(__file__))
FALLBACK = "diffcore: native extension not built ({reason}); using the Torch reference kernels"
# setup.py runs once per PEP 517 hook; only say why nothing is built when building.
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _warn(reason: str) -> None:
    print(FALLBACK.format(reason=reason), file=sys.stderr, flush=True)


def _sources(pattern: str) -> list[str]:
    """Source files matching ``pattern`` under the repo root, as sorted relative paths."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _compile_flags() -> tuple[list[str], list[str]]:
    """Return (C++ compile args, link args) for the host platform."""
    if sys.platform == "win32":
        return ["/O2", "/std:c++17", "/openmp"], []
    # the C++ standard is the one torch.utils.cpp_extension picks for this torch; no errno from
    # sqrtf (so the in-kernel noise loop vectorizes) and no FMA contraction (the noise and step
    # math round every op, bit-identical to the reference)
    cxx = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
    if sys.platform.startswith("linux"):
        return cxx + ["-fopenmp"], ["-fopenmp"]
    return cxx, []  # macOS: Apple clang ships without OpenMP


def _native_extensions() -> tuple[list[Any], type, str | None]:
    """Return (ext_modules, build_ext class, reason nothing is built or None)."""
    if os.environ.get("DIFFCORE_BUILD_NATIVE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return [], _SetuptoolsBuildExt, "DIFFCORE_BUILD_NATIVE=0"
    cpp_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu")
    if not cpp_sources and not cuda_sources:
        return [], _SetuptoolsBuildExt, "no C++ sources in csrc/"
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # noqa: BLE001 - any import failure means "no torch"
        return [], _SetuptoolsBuildExt, f"torch is not importable: {exc}"

    cxx_flags, link_flags = _compile_flags()
    cuda_home = cpp_extension.CUDA_HOME
    has_nvcc = cuda_home is not None and any(
        os.path.exists(os.path.join(cuda_home, "bin", nvcc)) for nvcc in ("nvcc", "nvcc.exe")
    )
    if torch.version.cuda is not None and has_nvcc and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            name="diffcore._C",
            sources=cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
            define_macros=[("DIFFCORE_WITH_CUDA", None)],
        )
    elif cpp_sources:
        ext = cpp_extension.CppExtension(
            name="diffcore._C",
            sources=cpp_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    else:
        return [], _SetuptoolsBuildExt, "CUDA sources only, but torch has no CUDA or nvcc is missing"

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension, but a failed compile warns instead of failing the install."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - compile errors come in many types
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                _warn(f"compilation failed: {first_line}")
                self.extensions = []  # nothing to copy into the wheel / source tree

    return [ext], OptionalBuildExt, None


def _packages() -> list[str]:
    """``diffcore`` with its subpackages, plus ``plugins/`` installed as ``diffcore_plugins``."""
    core = find_namespace_packages(ROOT, include=["diffcore", "diffcore.*"], exclude=["*__pycache__*"])
    bundled = find_namespace_packages(os.path.join(ROOT, "plugins"), exclude=["*__pycache__*"])
    return core + ["diffcore_plugins"] + [f"diffcore_plugins.{name}" for name in bundled]


ext_modules, build_ext_class, skipped_reason = _native_extensions()
if skipped_reason is not None and _BUILD_COMMANDS.intersection(sys.argv[1:]):
    _warn(skipped_reason)

setup(
    packages=_packages(),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext_class},
)
