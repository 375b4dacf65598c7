// The one switch from a launch's runtime shape to a compiled sampler-step kernel, shared by the
// CPU and CUDA backends: history slots K (0..kMaxSlots), history writes W (0..min(K, kMaxWrites)),
// classifier-free guidance folded in or not, in-kernel Philox noise or not, an x0 limit or not.
#pragma once

#include <c10/util/Exception.h>

#include "ops.h"

namespace diffcore {

// Compile-time shape of one sampler-step kernel instantiation.
template <int K_, int W_, bool CFG_, bool PHILOX_, bool LIMIT_>
struct StepShape {
  static constexpr int K = K_;
  static constexpr int W = W_;
  static constexpr bool CFG = CFG_;
  static constexpr bool PHILOX = PHILOX_;
  static constexpr bool LIMIT = LIMIT_;
};

template <int K, int W, bool CFG, typename Fn>
void dispatch_step_noise(const StepLaunch& s, Fn&& fn) {
  const bool limit = s.limit != nullptr;
  if (s.philox && limit) {
    fn(StepShape<K, W, CFG, true, true>{});
  } else if (s.philox) {
    fn(StepShape<K, W, CFG, true, false>{});
  } else if (limit) {
    fn(StepShape<K, W, CFG, false, true>{});
  } else {
    fn(StepShape<K, W, CFG, false, false>{});
  }
}

template <int K, int W, typename Fn>
void dispatch_step_flags(const StepLaunch& s, Fn&& fn) {
  if (s.u != nullptr) {
    dispatch_step_noise<K, W, true>(s, fn);
  } else {
    dispatch_step_noise<K, W, false>(s, fn);
  }
}

// Calls fn(StepShape<K, W, CFG, PHILOX, LIMIT>{}) for the shape of launch s; fn is a generic lambda
// that instantiates and runs the backend's kernel, e.g.
//   dispatch_step(s, [&](auto shape) { using S = decltype(shape); kernel<scalar_t, S::K, S::W, ...>(s); });
template <typename Fn>
void dispatch_step(const StepLaunch& s, Fn&& fn) {
  static_assert(kMaxSlots == 4 && kMaxWrites == 2, "dispatch_step lists the (K, W) pairs for 4 slots, 2 writes");
  switch (s.K * 3 + s.W) {
    case 0: return dispatch_step_flags<0, 0>(s, fn);
    case 3: return dispatch_step_flags<1, 0>(s, fn);
    case 4: return dispatch_step_flags<1, 1>(s, fn);
    case 6: return dispatch_step_flags<2, 0>(s, fn);
    case 7: return dispatch_step_flags<2, 1>(s, fn);
    case 8: return dispatch_step_flags<2, 2>(s, fn);
    case 9: return dispatch_step_flags<3, 0>(s, fn);
    case 10: return dispatch_step_flags<3, 1>(s, fn);
    case 11: return dispatch_step_flags<3, 2>(s, fn);
    case 12: return dispatch_step_flags<4, 0>(s, fn);
    case 13: return dispatch_step_flags<4, 1>(s, fn);
    case 14: return dispatch_step_flags<4, 2>(s, fn);
    default: TORCH_CHECK(false, "diffcore: unsupported history layout K=", s.K, " W=", s.W);
  }
}

}  // namespace diffcore
