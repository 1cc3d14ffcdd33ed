"""C++ (OpenMP) kernel for the fused STPN sequence op, compiled at first use.

Same maths and derivation as `rllib_stpn.nn.fused` (see its docstring); what changes is the
memory traffic on the (B, H, D) state F, which is the layer's whole cost:

* Forward: one pass per step. While it writes F_{t+1} = Λ F_t / n_t + Γ h_t z_tᵀ for a row, it
  already has z_{t+1} = [x_{t+1}; h_t] (all of h_t is known before the pass), so it accumulates
  the next step's row reductions G z, ||G||² and Σ z²|G| (G = W + F_{t+1}) on the values it has
  just written. F_t is read once and F_{t+1} written once.
* Backward: per row, two sweeps over (dL/dF_{t+1}, F_t) while the row is in cache (the first
  computes Σ Λ F gF and Σ Γ gF z, which dh and dn need before anything else can be formed), then
  dL/dF_t is written in place over dL/dF_{t+1}.
* Threads: sequences are independent, so each OpenMP thread runs all T steps for its own range
  of samples (no barrier per step; dz rows have one owner) and keeps its own dW, dΛ, dΓ sums,
  added up once at the end. A batch smaller than the thread count leaves threads idle.
* The saved states F_1..F_{T-1} are one buffer advised to transparent huge pages: faulting it
  in 4 KiB at a time cost more than the forward's own pass over it (0.29 s vs 0.08 s at the
  Pong size).

The library is built with `torch.utils.cpp_extension.load_inline` into torch's extensions
directory (g++, ninja and OpenMP; 15-75 s the first time, then loaded from the cache) and
registered as `torch.ops.rllib_stpn_fused_<hash>`. `available()` says whether it can be used; it
never raises, and `rllib_stpn.nn.fused` falls back to the pure-torch op when it is False, for
CUDA tensors, or when the environment variable RLLIB_STPN_NO_CPP=1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading

import torch
from torch.autograd.function import once_differentiable

from rllib_stpn.nn.functional import NORM_EPS, apply_sequence_function, needs_autograd

logger = logging.getLogger(__name__)

DISABLE_ENV = "RLLIB_STPN_NO_CPP"

_CPP_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

// z_t = [x_t ; h_{t-1}] (recurrent) or x_t for every sample, (B, D). h rows are hstride apart.
template <typename T>
void build_z(T* z, const T* x, int64_t t, const T* hprev, int64_t hstride, int64_t B,
             int64_t Tn, int64_t I, int64_t H, int64_t D, bool recurrent) {
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + (b * Tn + t) * I;
    T* zb = z + b * D;
    std::copy(xb, xb + I, zb);
    if (recurrent) std::copy(hprev + b * hstride, hprev + b * hstride + H, zb + I);
  }
}

// Row reductions of one step: s = G z, q = ||G||^2, pa = sum z^2 |G| with G = W + F.
template <typename T, bool NORM, bool POW>
inline void reduce_row(const T* __restrict f, const T* __restrict w, const T* __restrict z,
                       int64_t D, T& s_out, T& q_out, T& pa_out) {
  T s = 0, q = 0, pa = 0;
#pragma omp simd reduction(+ : s, q, pa)
  for (int64_t j = 0; j < D; ++j) {
    const T g = w[j] + f[j];
    s += g * z[j];
    if (NORM) q += g * g;
    if (POW) pa += z[j] * z[j] * std::abs(g);
  }
  s_out = s;
  q_out = q;
  pa_out = pa;
}

// Sequences are independent, so each thread runs the whole time loop for its own contiguous
// range of samples: no barrier per step, dz rows have one owner. Inside a step, neurons go in
// blocks whose parameter rows (and, backward, gradient rows) stay in L2 while the block's rows
// of F are streamed for every sample of the range.
inline void sample_range(int64_t B, int64_t& b0, int64_t& b1) {
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
  b0 = B * tid / nth;
  b1 = B * (tid + 1) / nth;
}

inline int64_t block_size(int64_t H, int64_t D, int64_t rows, int64_t elem) {
  constexpr int64_t kBudget = 256 * 1024;
  return std::max<int64_t>(1, std::min<int64_t>(H, kBudget / (rows * D * elem)));
}

template <typename T, bool NORM, bool POW>
void fwd_kernel(const T* x, const T* h0, const T* F0, const T* W, const T* bias, const T* L,
                const T* G, int64_t B, int64_t Tn, int64_t I, int64_t H, int64_t D,
                bool recurrent, T eps, const std::vector<T*>& dst, T* out, T* S, T* N, T* R,
                T* P, int nthreads) {
  std::vector<T> za(B * D), zb(B * D), rs(B * H), rq(B * H, 0), rp(B * H, 0), hh(B * H),
      inv(B * H);
  const int64_t nb = block_size(H, D, 3, sizeof(T));
#pragma omp parallel num_threads(nthreads)
  {
    int64_t b0, b1;
    sample_range(B, b0, b1);
    T* zc = za.data();
    T* zn = zb.data();
    for (int64_t b = b0; b < b1; ++b) {
      build_z(zc + b * D, x + b * Tn * I, 0, h0 + b * H, 0, 1, Tn, I, H, D, recurrent);
    }
    for (int64_t i0 = 0; i0 < H; i0 += nb) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
          const int64_t k = b * H + i;
          reduce_row<T, NORM, POW>(F0 + k * D, W + i * D, zc + b * D, D, rs[k], rq[k], rp[k]);
        }
      }
    }
    for (int64_t t = 0; t < Tn; ++t) {
      const bool more = t + 1 < Tn;
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < H; ++i) {
          const int64_t k = b * H + i, kt = (b * Tn + t) * H + i;
          T n = 1;
          if (NORM) {
            const T r = std::sqrt(rq[k]);
            n = r + eps;
            R[kt] = r;
            N[kt] = n;
          }
          const T h = std::tanh(rs[k] / n + (bias ? bias[i] : T(0)));
          out[kt] = h;
          S[kt] = rs[k];
          if (POW) P[kt] = rp[k] / n;
          hh[k] = h;
          inv[k] = T(1) / n;
        }
        if (more) {
          build_z(zn + b * D, x + b * Tn * I, t + 1, hh.data() + b * H, 0, 1, Tn, I, H, D,
                  recurrent);
        }
      }
      const T* Fsrc = t == 0 ? F0 : dst[t - 1];
      T* Fdst = dst[t];
      for (int64_t i0 = 0; i0 < H; i0 += nb) {
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
            const T* __restrict w = W + i * D;
            const T* __restrict l = L + i * D;
            const T* __restrict g = G + i * D;
            const int64_t k = b * H + i;
            const T* __restrict f = Fsrc + k * D;
            T* __restrict fd = Fdst + k * D;
            const T* __restrict z = zc + b * D;
            const T h = hh[k], iv = inv[k];
            if (!more) {
#pragma omp simd
              for (int64_t j = 0; j < D; ++j) fd[j] = l[j] * (f[j] * iv) + g[j] * (h * z[j]);
              continue;
            }
            const T* __restrict z2 = zn + b * D;
            T s = 0, q = 0, pa = 0;
#pragma omp simd reduction(+ : s, q, pa)
            for (int64_t j = 0; j < D; ++j) {
              const T v = l[j] * (f[j] * iv) + g[j] * (h * z[j]);
              fd[j] = v;
              const T gg = w[j] + v;
              s += gg * z2[j];
              if (NORM) q += gg * gg;
              if (POW) pa += z2[j] * z2[j] * std::abs(gg);
            }
            rs[k] = s;
            rq[k] = q;
            rp[k] = pa;
          }
        }
      }
      std::swap(zc, zn);
    }
  }
}

template <typename T, bool NORM, bool POW>
void bwd_kernel(const T* x, const T* h0, const T* F0, const T* Fs, const T* W, const T* L,
                const T* G, const T* out, const T* S, const T* N, const T* R, const T* P,
                const T* g_out, const T* g_h, const T* g_P, T* gF, int64_t B, int64_t Tn,
                int64_t I, int64_t H, int64_t D, bool recurrent, T* dx, T* dh0, T* dW, T* db,
                T* dL, T* dG, int nthreads) {
  // Per-thread partial sums of dW, dΛ, dΓ (H, D each) and db (H), added up at the end.
  const int64_t per = 3 * H * D + H;
  std::vector<T> acc(static_cast<int64_t>(nthreads) * per, T(0));
  std::vector<T> z(B * D), gh(B * H, 0), dz(B * D);
  if (g_h) std::copy(g_h, g_h + B * H, gh.begin());
  const int64_t nb = block_size(H, D, 6, sizeof(T));
#pragma omp parallel num_threads(nthreads)
  {
    int64_t b0, b1;
    sample_range(B, b0, b1);
    T* dWt = acc.data() + static_cast<int64_t>(omp_get_thread_num()) * per;
    T* dLt = dWt + H * D;
    T* dGt = dLt + H * D;
    T* dbt = dGt + H * D;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const T* F = t > 0 ? Fs + (t - 1) * B * H * D : F0;
      for (int64_t b = b0; b < b1; ++b) {
        if (t > 0) {
          build_z(z.data() + b * D, x + b * Tn * I, t, out + (b * Tn + t - 1) * H, 0, 1, Tn, I,
                  H, D, recurrent);
        } else {
          build_z(z.data() + b * D, x + b * Tn * I, t, h0 + b * H, 0, 1, Tn, I, H, D,
                  recurrent);
        }
        std::fill(dz.data() + b * D, dz.data() + (b + 1) * D, T(0));
      }
      for (int64_t i0 = 0; i0 < H; i0 += nb) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* __restrict zb = z.data() + b * D;
          T* __restrict dzb = dz.data() + b * D;
          for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
            const T* __restrict w = W + i * D;
            const T* __restrict l = L + i * D;
            const T* __restrict g = G + i * D;
            T* __restrict dWi = dWt + i * D;
            T* __restrict dLi = dLt + i * D;
            T* __restrict dGi = dGt + i * D;
            const int64_t k = b * H + i, kt = (b * Tn + t) * H + i;
            const T* __restrict f = F + k * D;
            T* __restrict u = gF + k * D;
            T c1 = 0, e = 0;
#pragma omp simd reduction(+ : c1, e)
            for (int64_t j = 0; j < D; ++j) {
              if (NORM) c1 += l[j] * f[j] * u[j];
              e += g[j] * u[j] * zb[j];
            }
            const T h = out[kt];
            const T dh = gh[k] + e + (g_out ? g_out[kt] : T(0));
            const T dpre = dh * (T(1) - h * h);
            dbt[i] += dpre;
            const T gp = POW ? g_P[b * Tn + t] : T(0);
            T iv = 1, kk = 0;
            if (NORM) {
              const T n = N[kt], r = R[kt];
              iv = T(1) / n;
              T dn = -(c1 + dpre * S[kt]) * iv * iv;
              if (POW) dn -= gp * P[kt] * iv;
              kk = r > T(0) ? dn / r : T(0);
            }
            const T a = dpre * iv, gpn = gp * iv, gpn2 = T(2) * gpn;
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) {
              const T uj = u[j], fj = f[j], zj = zb[j];
              const T Gj = w[j] + fj;
              T dGj = a * zj;
              if (NORM) dGj += kk * Gj;
              if (POW) {
                const T sg = static_cast<T>((Gj > T(0)) - (Gj < T(0)));
                dGj += gpn * sg * zj * zj;
              }
              dWi[j] += dGj;
              dLi[j] += uj * fj * iv;
              dGi[j] += uj * h * zj;
              T dzj = g[j] * uj * h + Gj * a;
              if (POW) dzj += gpn2 * zj * std::abs(Gj);
              dzb[j] += dzj;
              u[j] = l[j] * uj * iv + dGj;
            }
          }
        }
      }
      for (int64_t b = b0; b < b1; ++b) {
        std::copy(dz.data() + b * D, dz.data() + b * D + I, dx + (b * Tn + t) * I);
        for (int64_t i = 0; i < H; ++i) gh[b * H + i] = recurrent ? dz[b * D + I + i] : T(0);
      }
    }
    for (int64_t b = b0; b < b1; ++b) {
      std::copy(gh.data() + b * H, gh.data() + (b + 1) * H, dh0 + b * H);
    }
  }
  for (int th = 0; th < nthreads; ++th) {
    const T* a = acc.data() + static_cast<int64_t>(th) * per;
    for (int64_t m = 0; m < H * D; ++m) {
      dW[m] += a[m];
      dL[m] += a[H * D + m];
      dG[m] += a[2 * H * D + m];
    }
    for (int64_t i = 0; i < H; ++i) db[i] += a[3 * H * D + i];
  }
}

// Ask for transparent huge pages on a large fresh buffer: faulting in the saved states 4 KiB at a
// time costs several times the kernel's own passes over them. Advisory; errors are ignored.
Tensor advise_huge(Tensor t) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (p + t.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return t;
}

// A buffer the kernels write in full before reading. Not `at::empty`: with deterministic
// algorithms on (RLlib turns them on when a seed is set and no CUDA is present) that fills every
// new tensor with NaN first, which for the saved states cost more than the whole forward pass.
Tensor uninit(at::IntArrayRef sizes, const at::TensorOptions& o) {
  return Tensor(at::detail::empty_cpu(sizes, o));
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

Tensor opt_contig(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

std::vector<Tensor> stpn_forward(const Tensor& x_, const Tensor& h0_, const Tensor& F0_,
                                 const Tensor& W_, const std::optional<Tensor>& bias_,
                                 const Tensor& L_, const Tensor& G_, bool recurrent,
                                 bool normalize, bool power, bool keep, double eps) {
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), F0 = F0_.contiguous();
  const Tensor W = W_.contiguous(), L = L_.contiguous(), G = G_.contiguous();
  const Tensor bias = opt_contig(bias_);
  const int64_t B = x.size(0), Tn = x.size(1), I = x.size(2), H = W.size(0), D = W.size(1);
  const auto o = x.options();
  Tensor out = uninit({B, Tn, H}, o), S = uninit({B, Tn, H}, o);
  Tensor N = normalize ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor R = normalize ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor P = power ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor FT = uninit({B, H, D}, o);
  Tensor Fs = (keep && Tn > 1) ? advise_huge(uninit({Tn - 1, B, H, D}, o)) : uninit({0}, o);
  Tensor spare = (!keep && Tn > 1) ? uninit({B, H, D}, o) : uninit({0}, o);
  const int nt = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_forward", [&] {
    using T = scalar_t;
    std::vector<T*> dst(Tn);
    for (int64_t t = 0; t < Tn; ++t) {
      if (t == Tn - 1) dst[t] = FT.data_ptr<T>();
      else if (keep) dst[t] = Fs.data_ptr<T>() + t * B * H * D;
      else dst[t] = ((Tn - 1 - t) % 2 == 0) ? FT.data_ptr<T>() : spare.data_ptr<T>();
    }
    auto run = [&](auto kernel) {
      kernel(x.data_ptr<T>(), h0.data_ptr<T>(), F0.data_ptr<T>(), W.data_ptr<T>(),
             ptr_or_null<T>(bias), L.data_ptr<T>(), G.data_ptr<T>(), B, Tn, I, H, D, recurrent,
             static_cast<T>(eps), dst, out.data_ptr<T>(), S.data_ptr<T>(),
             const_cast<T*>(ptr_or_null<T>(N)), const_cast<T*>(ptr_or_null<T>(R)),
             const_cast<T*>(ptr_or_null<T>(P)), nt);
    };
    if (normalize && power) run(fwd_kernel<T, true, true>);
    else if (normalize) run(fwd_kernel<T, true, false>);
    else if (power) run(fwd_kernel<T, false, true>);
    else run(fwd_kernel<T, false, false>);
  });
  return {out, FT, Fs, S, N, R, P};
}

std::vector<Tensor> stpn_backward(const Tensor& x_, const Tensor& h0_, const Tensor& F0_,
                                  const Tensor& Fs_, const Tensor& W_, const Tensor& L_,
                                  const Tensor& G_, const Tensor& out_, const Tensor& S_,
                                  const Tensor& N_, const Tensor& R_, const Tensor& P_,
                                  const std::optional<Tensor>& g_out_,
                                  const std::optional<Tensor>& g_h_,
                                  const std::optional<Tensor>& g_P_, Tensor& gF,
                                  bool recurrent, bool normalize) {
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), F0 = F0_.contiguous();
  const Tensor Fs = Fs_.contiguous(), W = W_.contiguous(), L = L_.contiguous();
  const Tensor G = G_.contiguous(), out = out_.contiguous(), S = S_.contiguous();
  const Tensor N = N_.contiguous(), R = R_.contiguous(), P = P_.contiguous();
  const Tensor g_out = opt_contig(g_out_), g_h = opt_contig(g_h_), g_P = opt_contig(g_P_);
  TORCH_CHECK(gF.is_contiguous(), "stpn_backward: gF must be contiguous");
  const bool power = g_P.defined();
  const int64_t B = x.size(0), Tn = x.size(1), I = x.size(2), H = W.size(0), D = W.size(1);
  Tensor dx = uninit(x.sizes(), x.options()), dh0 = uninit(h0.sizes(), h0.options());
  Tensor dW = at::zeros_like(W), dL = at::zeros_like(W), dG = at::zeros_like(W);
  Tensor db = at::zeros({H}, W.options());
  const int nt = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_backward", [&] {
    using T = scalar_t;
    auto run = [&](auto kernel) {
      kernel(x.data_ptr<T>(), h0.data_ptr<T>(), F0.data_ptr<T>(), ptr_or_null<T>(Fs),
             W.data_ptr<T>(), L.data_ptr<T>(), G.data_ptr<T>(), out.data_ptr<T>(),
             S.data_ptr<T>(), ptr_or_null<T>(N), ptr_or_null<T>(R), ptr_or_null<T>(P),
             ptr_or_null<T>(g_out), ptr_or_null<T>(g_h), ptr_or_null<T>(g_P), gF.data_ptr<T>(),
             B, Tn, I, H, D, recurrent, dx.data_ptr<T>(), dh0.data_ptr<T>(), dW.data_ptr<T>(),
             db.data_ptr<T>(), dL.data_ptr<T>(), dG.data_ptr<T>(), nt);
    };
    if (normalize && power) run(bwd_kernel<T, true, true>);
    else if (normalize) run(bwd_kernel<T, true, false>);
    else if (power) run(bwd_kernel<T, false, true>);
    else run(bwd_kernel<T, false, false>);
  });
  return {dx, dh0, dW, db, dL, dG};
}

}  // namespace

TORCH_LIBRARY(STPN_NAMESPACE, m) {
  m.def("forward(Tensor x, Tensor h0, Tensor F0, Tensor W, Tensor? bias, Tensor lam, "
        "Tensor gam, bool recurrent, bool normalize, bool power, bool keep, float eps) "
        "-> Tensor[]", &stpn_forward);
  m.def("backward(Tensor x, Tensor h0, Tensor F0, Tensor Fs, Tensor W, Tensor lam, "
        "Tensor gam, Tensor out, Tensor S, Tensor N, Tensor R, Tensor P, Tensor? g_out, "
        "Tensor? g_h, Tensor? g_P, Tensor(a!) gF, bool recurrent, bool normalize) -> Tensor[]",
        &stpn_backward);
}
"""


def _cpu_flags() -> list[str]:
    """-mavx2 -mfma where this x86 CPU has them (about 20% faster at the Pong size).

    They are part of the build's name, so a cache directory shared with a CPU without them
    gets a separate build instead of an illegal instruction.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []
    except OSError:
        pass
    return []


_CFLAGS = ["-O3", "-fopenmp", *_cpu_flags()]
_HASH = hashlib.sha256((_CPP_SOURCE + " ".join(_CFLAGS)).encode()).hexdigest()[:12]
_NAMESPACE = f"rllib_stpn_fused_{_HASH}"

_lock = threading.Lock()
_state: dict = {"tried": False, "ops": None, "error": None}


def _ensure_ninja_on_path() -> None:
    """torch builds with the `ninja` it finds on PATH. The PyPI `ninja` package puts it next to
    the interpreter (a venv's bin/), which is not on PATH when the venv is not activated."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package: the binary lives in its BIN_DIR

        candidates.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in candidates:
        if shutil.which("ninja", path=folder):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return


def load():
    """Build (first time) or load the extension; returns its ops namespace. Raises on failure."""
    with _lock:
        if _state["ops"] is not None:
            return _state["ops"]
        from torch.utils.cpp_extension import load_inline

        _ensure_ninja_on_path()

        load_inline(
            name=_NAMESPACE,
            cpp_sources=[_CPP_SOURCE.replace("STPN_NAMESPACE", _NAMESPACE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            no_implicit_headers=True,
            verbose=False,
        )
        _state["ops"] = getattr(torch.ops, _NAMESPACE)
        return _state["ops"]


def available() -> bool:
    """Whether the C++ kernel can be used (tries to build it once per process; never raises)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    if not _state["tried"]:
        _state["tried"] = True
        try:
            load()
            logger.debug("STPN fused op: using the C++ kernel (%s)", _NAMESPACE)
        except Exception as exc:  # any build/load failure: fall back to pure torch
            _state["error"] = exc
            logger.debug("STPN fused op: C++ kernel unavailable, using pure torch: %r", exc)
    return _state["ops"] is not None


def supports(*tensors: torch.Tensor | None) -> bool:
    """CPU float32/float64 tensors of one dtype, and the kernel built: the C++ path applies."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in present):
        return False
    return available()


def _expand(p: torch.Tensor, H: int, D: int) -> torch.Tensor:
    """Uniform (scalar) Λ / Γ as an (H, D) tensor: one kernel serves both plasticity modes."""
    return p.expand(H, D).contiguous() if p.dim() == 0 else p


def _kernel_forward(
    args: tuple, recurrent: bool, normalize: bool, return_power: bool, *, keep: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(Λ, Γ as (H, D), the kernel's outputs out, F_T, F_1..F_{T-1}, s, n, r, P)."""
    x, h, F, weight, bias, weight_lambda, weight_gamma = args
    H, D = weight.shape
    lam, gam = _expand(weight_lambda, H, D), _expand(weight_gamma, H, D)
    outputs = load().forward(
        x, h, F, weight, bias, lam, gam, recurrent, normalize, return_power, keep, NORM_EPS
    )
    return lam, gam, outputs


class STPNSequenceCppFunction(torch.autograd.Function):
    """The fused sequence op on the C++ kernel; same signature as `STPNSequenceFunction`."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        h0: torch.Tensor,
        F0: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_lambda: torch.Tensor,
        weight_gamma: torch.Tensor,
        recurrent: bool,
        normalize: bool,
        return_power: bool,
    ):
        args = (x, h0, F0, weight, bias, weight_lambda, weight_gamma)
        lam, gam, (out, FT, Fs, S, N, R, P) = _kernel_forward(
            args, recurrent, normalize, return_power, keep=True
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, F0, Fs, weight, lam, gam, out, S, N, R, P)
        ctx.flags = (recurrent, normalize, return_power, weight_lambda.dim() == 0, bias is not None)
        h_out = out[:, -1].clone()
        if not return_power:
            return out, h_out, FT
        return out, h_out, FT, P.sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_h, g_F, g_power=None):
        x, h0, F0, Fs, W, lam, gam, out, S, N, R, P = ctx.saved_tensors
        recurrent, normalize, return_power, uniform, has_bias = ctx.flags
        needs = ctx.needs_input_grad
        # dL/dF is carried in place: start from a private copy of the given gradient (or zeros).
        gF = torch.zeros_like(F0) if g_F is None else g_F.contiguous().clone()
        gP = g_power if return_power else None
        dx, dh0, dW, db, dlam, dgam = load().backward(
            x, h0, F0, Fs, W, lam, gam, out, S, N, R, P, g_out, g_h, gP, gF, recurrent, normalize
        )
        if uniform:
            dlam, dgam = dlam.sum(), dgam.sum()
        return (
            dx if needs[0] else None,
            dh0 if needs[1] else None,
            gF if needs[2] else None,
            dW if needs[3] else None,
            db if (has_bias and needs[4]) else None,
            dlam if needs[5] else None,
            dgam if needs[6] else None,
            None,
            None,
            None,
        )


def stpn_sequence_cpp(
    x: torch.Tensor,
    h: torch.Tensor,
    F: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_lambda: torch.Tensor,
    weight_gamma: torch.Tensor,
    *,
    recurrent: bool,
    normalize: bool,
    return_power: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Drop-in for `stpn_sequence_reference` on the C++ kernel (CPU, float32/float64)."""
    args = (x, h, F, weight, bias, weight_lambda, weight_gamma)
    if not needs_autograd(*args):
        # Sampling path: nothing kept for backward, two F buffers.
        with torch.no_grad():
            _, _, (out, FT, *_, P) = _kernel_forward(
                args, recurrent, normalize, return_power, keep=False
            )
        return out, out[:, -1].clone(), FT, P.sum(-1) if return_power else None
    return apply_sequence_function(
        STPNSequenceCppFunction, args, recurrent, normalize, return_power
    )
