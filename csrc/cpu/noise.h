// In-kernel noise of the CPU kernels (csrc/cpu/noise.cpp): blocks of the per-sample Philox draw
// of csrc/step_math.h, vectorized for the host's SIMD width.
#pragma once

#include <cstdint>

namespace diffcore {

// Blocks g0 .. g0+n-1 of `sample` of the draw (seed, offset) as 4n normals in out (mode
// kNoiseExact or kNoiseFast, csrc/step_math.h); bit-identical to philox_normal4 block by block.
void philox_blocks(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t g0, int64_t n, int mode, float* out);

}  // namespace diffcore
