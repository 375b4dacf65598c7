"""Built-in samplers. Each module holds one family's math; this maps names to samplers."""

from __future__ import annotations

from diffcore.samplers.adaptive import dpm_adaptive
from diffcore.samplers.base import ProgramSampler, Sampler, program_sampler
from diffcore.samplers.builder import Builder, History, Point
from diffcore.samplers.cfg_pp import dpmpp_2m_cfg_pp, euler_ancestral_cfg_pp, euler_cfg_pp
from diffcore.samplers.consistency import lcm, tcd
from diffcore.samplers.ddim import ddim, euler, euler_ancestral
from diffcore.samplers.ddpm import ddpm
from diffcore.samplers.deis import deis
from diffcore.samplers.dpmpp import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde
from diffcore.samplers.expr import Expr
from diffcore.samplers.heun import heun
from diffcore.samplers.ipndm import ipndm
from diffcore.samplers.lms import lms
from diffcore.samplers.pndm import pndm
from diffcore.samplers.singlestep import dpm_2, dpm_2_ancestral, dpmpp_2s, dpmpp_2s_ancestral, dpmpp_sde
from diffcore.samplers.unipc import unipc

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        ddpm,
        ddim,
        euler,
        euler_ancestral,
        heun,
        dpmpp_2m,
        dpmpp_2m_sde,
        dpmpp_3m_sde,
        unipc,
        lms,
        dpm_2,
        dpm_2_ancestral,
        dpmpp_2s,
        dpmpp_2s_ancestral,
        dpmpp_sde,
        dpm_adaptive,
        euler_cfg_pp,
        euler_ancestral_cfg_pp,
        dpmpp_2m_cfg_pp,
        deis,
        ipndm,
        pndm,
        lcm,
        tcd,
    )
}

__all__ = ["SAMPLERS", "Builder", "Expr", "History", "Point", "ProgramSampler", "Sampler", "program_sampler"]
