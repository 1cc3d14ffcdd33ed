// Fused STPN sequence op on the CPU (C++/OpenMP), loaded by rllib_stpn/nn/fused_cpp.py.
//
// Same maths and derivation as rllib_stpn/nn/fused.py; what changes is the memory traffic on the
// (B, H, D) state F, which is the layer's whole cost:
// * Forward: one pass per step. While it writes F_{t+1} = Λ F_t / n_t + Γ h_t z_tᵀ for a row, it
//   already has z_{t+1} = [x_{t+1}; h_t] (all of h_t is known before the pass), so it accumulates
//   the next step's row reductions G z, ||G||² and Σ z²|G| (G = W + F_{t+1}) on the values it has
//   just written. F_t is read once and F_{t+1} written once.
// * Backward: per row, two sweeps over (dL/dF_{t+1}, F_t) while the row is in cache (the first
//   computes Σ Λ F gF and Σ Γ gF z, which dh and dn need before anything else can be formed),
//   then dL/dF_t is written in place over dL/dF_{t+1}.
// * Threads: sequences are independent, so each OpenMP thread runs all T steps for its own range
//   of samples (no barrier per step; dz rows have one owner) and keeps its own dW, dΛ, dΓ sums,
//   added up once at the end. A batch smaller than the thread count leaves threads idle.
// * Per-sample lengths (`lens`, optional): a sample stops after its own number of steps, so the
//   zero padding of RLlib's training rows costs nothing; its state after its last step is the
//   returned F, its outputs and power on the padding are zero.
// * The saved states F_1..F_{T-1} are one buffer advised to transparent huge pages: faulting it
//   in 4 KiB at a time cost more than the forward's own pass over it (0.29 s vs 0.08 s at the
//   Pong size). It and the new F come from a pool of buffers reused once nothing refers to
//   them, so a steady run faults in no fresh pages at all (see `Pool`).
// * One step (sampling) reads each row of F once: reduce it, compute its neuron, write it.
// * The authors' variants (F clamped to [-c, c], normalisation after the update; `Variant`) take
//   separate instantiations (VAR = true) with plain passes over each row, so the default path's
//   code is what it was without them.

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// Denormal floats take the slow path of the FPU, tens of times slower per operation, and F
// makes them: a synapse whose input is zero (a ReLU feature, say) only decays, Λ / n per step,
// until it underflows. With CNN features that made the training forward and backward about 1.7x
// slower. Each kernel thread flushes denormals to zero (FTZ/DAZ) while it runs and then
// restores the caller's mode; the values affected are below 1e-38, far under any tolerance.
struct FlushDenormals {
#if defined(__SSE__)
  const unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

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

// F' = Λ F / n + Γ h zᵀ for one row (iv = 1/n), the default update: the sampling step, a
// sample's last training step and the backward's recomputed states (the other training steps
// fuse it with the next step's reductions in `update_row_streaming` and its fallback loop).
template <typename T>
inline void update_row(const T* __restrict f, T* __restrict fd, const T* __restrict l,
                       const T* __restrict g, const T* __restrict z, T h, T iv, int64_t D) {
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) fd[j] = l[j] * (f[j] * iv) + g[j] * (h * z[j]);
}

// The authors' variants (derivation in fused.py): U = Λ F a + Γ h zᵀ (a = 1/n, or 1 with `post`),
// C = clamp(U, -c, c) (c = +inf without the clamp), F' = C / (||W + C|| + eps) with `post`, else C.
// M receives ||W + C|| per (sample, step, neuron) for the backward.
template <typename T>
struct Variant {
  T clamp;
  bool post;
  T* M;
};

template <typename T>
inline T clamp_to(T v, T c) {
  return std::min(std::max(v, -c), c);
}

// Writes F' of one row; returns ||W + C|| (0 without `post`).
template <typename T>
inline T update_row_variant(const T* __restrict f, T* __restrict fd, const T* __restrict w,
                            const T* __restrict l, const T* __restrict g, const T* __restrict z,
                            T h, T a, const Variant<T>& var, T eps, int64_t D) {
  const T c = var.clamp;
  T q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t j = 0; j < D; ++j) {
    const T v = clamp_to(l[j] * (f[j] * a) + g[j] * (h * z[j]), c);
    fd[j] = v;
    const T gg = w[j] + v;
    q += gg * gg;
  }
  if (!var.post) return T(0);
  const T r = std::sqrt(q), im = T(1) / (r + eps);
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) fd[j] *= im;
  return r;
}

// Backward of the variant maps for one row, in place: u = dL/dF' becomes dL/dU (through F' = C/m
// with `post`, then the clamp's mask, where torch.clamp passes the gradient: -c <= U <= c); the
// post-normalisation's part of dL/dW goes to dW. rm = ||W + C|| of the forward.
template <typename T>
inline void variant_grad_row(const T* __restrict f, T* __restrict u, const T* __restrict w,
                             const T* __restrict l, const T* __restrict g,
                             const T* __restrict z, T h, T a, const Variant<T>& var, T rm, T eps,
                             T* __restrict dW, int64_t D) {
  const T c = var.clamp;
  if (!var.post) {
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) {
      const T U = l[j] * (f[j] * a) + g[j] * (h * z[j]);
      u[j] = (U >= -c && U <= c) ? u[j] : T(0);
    }
    return;
  }
  T uc = 0;
#pragma omp simd reduction(+ : uc)
  for (int64_t j = 0; j < D; ++j) uc += u[j] * clamp_to(l[j] * (f[j] * a) + g[j] * (h * z[j]), c);
  const T m = rm + eps, im = T(1) / m;
  const T k = rm > T(0) ? -uc * im * im / rm : T(0);
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) {
    const T U = l[j] * (f[j] * a) + g[j] * (h * z[j]);
    const T wc = k * (w[j] + clamp_to(U, c));
    dW[j] += wc;
    u[j] = (U >= -c && U <= c) ? u[j] * im + wc : T(0);
  }
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

// F_{t+1} = Λ F_t / n + Γ h z for one row, written with non-temporal (streaming) stores where
// AVX-512 allows, while the next step's reductions s = G z', q = ||G||², pa = Σ z'² |G|
// (G = W + F_{t+1}) accumulate. A normal store first reads the cache line it writes; the saved
// states are hundreds of MB that the backward reads much later, so that read is pure waste.
template <typename T, bool NORM, bool POW>
inline void update_row_streaming(const T* __restrict f, T* __restrict fd, const T* __restrict w,
                                 const T* __restrict l, const T* __restrict g,
                                 const T* __restrict z, const T* __restrict z2, T h, T iv,
                                 int64_t D, T& s, T& q, T& pa) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j < D && (reinterpret_cast<uintptr_t>(fd + j) & 63) != 0; ++j) {
      const T v = l[j] * (f[j] * iv) + g[j] * (h * z[j]);
      fd[j] = v;
      const T gg = w[j] + v;
      s += gg * z2[j];
      if (NORM) q += gg * gg;
      if (POW) pa += z2[j] * z2[j] * std::abs(gg);
    }
    const __m512 vh = _mm512_set1_ps(h), viv = _mm512_set1_ps(iv);
    __m512 vs = _mm512_setzero_ps(), vq = _mm512_setzero_ps(), vp = _mm512_setzero_ps();
    for (; j + 16 <= D; j += 16) {
      const __m512 hz = _mm512_mul_ps(vh, _mm512_loadu_ps(z + j));
      const __m512 fi = _mm512_mul_ps(_mm512_loadu_ps(f + j), viv);
      const __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(l + j), fi,
                                       _mm512_mul_ps(_mm512_loadu_ps(g + j), hz));
      _mm512_stream_ps(fd + j, v);
      const __m512 gg = _mm512_add_ps(_mm512_loadu_ps(w + j), v);
      const __m512 zz = _mm512_loadu_ps(z2 + j);
      vs = _mm512_fmadd_ps(gg, zz, vs);
      if (NORM) vq = _mm512_fmadd_ps(gg, gg, vq);
      if (POW) vp = _mm512_fmadd_ps(_mm512_mul_ps(zz, zz), _mm512_abs_ps(gg), vp);
    }
    s += _mm512_reduce_add_ps(vs);
    if (NORM) q += _mm512_reduce_add_ps(vq);
    if (POW) pa += _mm512_reduce_add_ps(vp);
  }
#endif
#pragma omp simd reduction(+ : s, q, pa)
  for (int64_t jj = j; jj < D; ++jj) {
    const T v = l[jj] * (f[jj] * iv) + g[jj] * (h * z[jj]);
    fd[jj] = v;
    const T gg = w[jj] + v;
    s += gg * z2[jj];
    if (NORM) q += gg * gg;
    if (POW) pa += z2[jj] * z2[jj] * std::abs(gg);
  }
}

inline void store_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// Where sample b's F_{t+1} goes. With `keep` (training), every `every`-th state (F_every,
// F_2every, ...) lands in its checkpoint slab of the saved-states buffer Fs and the others in two
// scratch slabs after them, which alternate (the backward recomputes those states from the
// checkpoints: `recompute_segment`); `every` = 1 keeps all of F_1..F_{T-1}. Without `keep`
// (sampling) two buffers alternate. Either way a sample's last state (after its step len_b - 1)
// lands in FT.
template <typename T>
struct FDest {
  T* FT;
  T* Fs;
  T* spare;
  int64_t BHD;
  bool keep;
  int64_t every;        // checkpoint interval k
  int64_t checkpoints;  // slabs 0..checkpoints-1 of Fs hold F_k, F_2k, ...
  T* base(int64_t t, int64_t len) const {
    if (t == len - 1) return FT;
    if (keep) {
      const int64_t s = t + 1;  // the state written at step t
      if (s % every == 0) return Fs + (s / every - 1) * BHD;
      return Fs + (checkpoints + s % 2) * BHD;
    }
    return ((len - 1 - t) % 2 == 0) ? FT : spare;
  }
};

// One step (the sampling case): each row of F is reduced and updated while it is in L1, so F is
// read once instead of twice (fwd_kernel's first step needs all of h before any row is written,
// because it reduces the next step's rows as it writes). Neurons go in blocks whose parameter
// rows stay in L2 while every sample's rows stream through.
template <typename T, bool NORM, bool POW, bool VAR>
void fwd_one_step(const T* x, const T* h0, const T* F0, const T* W, const T* bias, const T* L,
                  const T* G, const int64_t* lens, int64_t B, int64_t I, int64_t H, int64_t D,
                  bool recurrent, T eps, const Variant<T>& var, T* FT, T* out, T* S, T* N, T* R,
                  T* P, int nthreads) {
  std::vector<T> z(B * D);
  const int64_t nb = block_size(H, D, 3, sizeof(T));
#pragma omp parallel num_threads(nthreads)
  {
    const FlushDenormals flush;
    int64_t b0, b1;
    sample_range(B, b0, b1);
    for (int64_t b = b0; b < b1; ++b) {
      build_z(z.data() + b * D, x + b * I, 0, h0 + b * H, 0, 1, 1, I, H, D, recurrent);
    }
    for (int64_t i0 = 0; i0 < H; i0 += nb) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool idle = lens && lens[b] == 0;  // length 0: F and h stay, outputs are zero
        const T* __restrict zb = z.data() + b * D;
        for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
          const int64_t k = b * H + i;
          const T* __restrict f = F0 + k * D;
          T* __restrict fd = FT + k * D;
          if (idle) {
            std::copy(f, f + D, fd);
            out[k] = T(0);
            if (POW) P[k] = T(0);
            continue;
          }
          const T* __restrict l = L + i * D;
          const T* __restrict g = G + i * D;
          T s, q, pa;
          reduce_row<T, NORM, POW>(f, W + i * D, zb, D, s, q, pa);
          T n = 1;
          if (NORM) {
            const T r = std::sqrt(q);
            n = r + eps;
            R[k] = r;
            N[k] = n;
          }
          const T h = std::tanh(s / n + (bias ? bias[i] : T(0)));
          out[k] = h;
          S[k] = s;
          if (POW) P[k] = pa / n;
          const T iv = T(1) / n;
          if constexpr (VAR) {
            const T a = var.post ? T(1) : iv;
            const T r = update_row_variant<T>(f, fd, W + i * D, l, g, zb, h, a, var, eps, D);
            if (var.post) var.M[k] = r;
          } else {
            update_row<T>(f, fd, l, g, zb, h, iv, D);
          }
        }
      }
    }
  }
}

template <typename T, bool NORM, bool POW, bool VAR>
void fwd_kernel(const T* x, const T* h0, const T* F0, const T* W, const T* bias, const T* L,
                const T* G, const int64_t* lens, int64_t B, int64_t Tn, int64_t I, int64_t H,
                int64_t D, bool recurrent, T eps, const Variant<T>& var, const FDest<T>& dst,
                T* out, T* S, T* N, T* R, T* P, int nthreads) {
  std::vector<T> za(B * D), zb(B * D), rs(B * H), rq(B * H, 0), rp(B * H, 0), hh(B * H),
      inv(B * H);
  const int64_t nb = block_size(H, D, 3, sizeof(T));
#pragma omp parallel num_threads(nthreads)
  {
    const FlushDenormals flush;
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
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t len = lens ? lens[b] : Tn;
        if (t >= len) continue;  // padding: this sample has ended
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
        if (t + 1 < len) {
          build_z(zn + b * D, x + b * Tn * I, t + 1, hh.data() + b * H, 0, 1, Tn, I, H, D,
                  recurrent);
        }
      }
      for (int64_t i0 = 0; i0 < H; i0 += nb) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t len = lens ? lens[b] : Tn;
          if (t >= len) continue;
          const T* Fsrc = t == 0 ? F0 : dst.base(t - 1, len);
          T* Fdst = dst.base(t, len);
          for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
            const T* __restrict w = W + i * D;
            const T* __restrict l = L + i * D;
            const T* __restrict g = G + i * D;
            const int64_t k = b * H + i;
            const T* __restrict f = Fsrc + k * D;
            T* __restrict fd = Fdst + k * D;
            const T* __restrict z = zc + b * D;
            const T h = hh[k], iv = inv[k];
            if constexpr (VAR) {
              const T a = var.post ? T(1) : iv;
              const T r = update_row_variant<T>(f, fd, w, l, g, z, h, a, var, eps, D);
              if (var.post) var.M[(b * Tn + t) * H + i] = r;
              if (t + 1 < len) {
                reduce_row<T, NORM, POW>(fd, w, zn + b * D, D, rs[k], rq[k], rp[k]);
              }
              continue;
            }
            if (t + 1 >= len) {
              update_row<T>(f, fd, l, g, z, h, iv, D);
              continue;
            }
            const T* __restrict z2 = zn + b * D;
            T s = 0, q = 0, pa = 0;
            if (dst.keep) {
              // F_{t+1} goes to the saved states, read again only in the backward: stream it.
              update_row_streaming<T, NORM, POW>(f, fd, w, l, g, z, z2, h, iv, D, s, q, pa);
            } else {
#pragma omp simd reduction(+ : s, q, pa)
              for (int64_t j = 0; j < D; ++j) {
                const T v = l[j] * (f[j] * iv) + g[j] * (h * z[j]);
                fd[j] = v;
                const T gg = w[j] + v;
                s += gg * z2[j];
                if (NORM) q += gg * gg;
                if (POW) pa += z2[j] * z2[j] * std::abs(gg);
              }
            }
            rs[k] = s;
            rq[k] = q;
            rp[k] = pa;
          }
        }
      }
      std::swap(zc, zn);
    }
    // Padding steps: zero outputs and power (they are outputs of the op); a sample of length 0
    // returns its initial F unchanged.
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t len = lens ? lens[b] : Tn;
      if (len >= Tn) continue;
      std::fill(out + (b * Tn + len) * H, out + (b + 1) * Tn * H, T(0));
      if (POW) std::fill(P + (b * Tn + len) * H, P + (b + 1) * Tn * H, T(0));
      if (len == 0) std::copy(F0 + b * H * D, F0 + (b + 1) * H * D, dst.FT + b * H * D);
    }
    store_fence();  // the streamed stores are visible before anyone reads the saved states
  }
}

// The backward's states F_{t0+1}..F_{t1} of the current thread's samples, recomputed from the
// checkpoint F_{t0} (`start`) into the segment slabs seg[0..t1-t0-1] with the forward's own
// update (h_s, n_s and, for the variants, the same row function are all saved), so that only every
// k-th state has to be kept between the forward and the backward. States a sample never reaches
// (s >= len_b) are skipped.
template <typename T, bool NORM, bool VAR>
void recompute_segment(const T* x, const T* h0, const T* W, const T* L, const T* G, const T* out,
                       const T* N, const int64_t* lens, int64_t b0, int64_t b1, int64_t Tn,
                       int64_t I, int64_t H, int64_t D, bool recurrent, T eps,
                       const Variant<T>& var, const T* start, T* seg, int64_t BHD, int64_t t0,
                       int64_t t1, T* z, int64_t nb) {
  for (int64_t s = t0 + 1; s <= t1; ++s) {
    const int64_t t = s - 1;  // the step whose update made F_s
    const T* src = t == t0 ? start : seg + (t - t0 - 1) * BHD;
    T* dst = seg + (s - t0 - 1) * BHD;
    for (int64_t b = b0; b < b1; ++b) {
      if (lens && s >= lens[b]) continue;
      const T* hprev = t > 0 ? out + (b * Tn + t - 1) * H : h0 + b * H;
      build_z(z + b * D, x + b * Tn * I, t, hprev, 0, 1, Tn, I, H, D, recurrent);
    }
    for (int64_t i0 = 0; i0 < H; i0 += nb) {
      for (int64_t b = b0; b < b1; ++b) {
        if (lens && s >= lens[b]) continue;
        const T* __restrict zb = z + b * D;
        for (int64_t i = i0; i < std::min(H, i0 + nb); ++i) {
          const int64_t k = b * H + i, kt = (b * Tn + t) * H + i;
          const T* __restrict f = src + k * D;
          T* __restrict fd = dst + k * D;
          const T* __restrict l = L + i * D;
          const T* __restrict g = G + i * D;
          const T h = out[kt], iv = NORM ? T(1) / N[kt] : T(1);
          if constexpr (VAR) {
            update_row_variant<T>(f, fd, W + i * D, l, g, zb, h, var.post ? T(1) : iv, var, eps,
                                  D);
          } else {
            update_row<T>(f, fd, l, g, zb, h, iv, D);
          }
        }
      }
    }
  }
}

template <typename T, bool NORM, bool POW, bool VAR>
void bwd_kernel(const T* x, const T* h0, const T* F0, const T* Fs, const T* W, const T* L,
                const T* G, const T* out, const T* S, const T* N, const T* R, const T* P,
                const T* g_out, const T* g_h, const T* g_P, T* gF, const int64_t* lens,
                int64_t B, int64_t Tn, int64_t I, int64_t H, int64_t D, bool recurrent, T eps,
                const Variant<T>& var, int64_t every, T* dx, T* dh0, T* dW, T* db, T* dL, T* dG,
                int nthreads) {
  // With `post` the update took F itself (a = 1): its terms lose the 1/n and dn its Σ Λ F u.
  const bool post = VAR && var.post;
  // Per-thread partial sums of dW, dΛ, dΓ (H, D each) and db (H), added up at the end.
  const int64_t per = 3 * H * D + H;
  std::vector<T> acc(static_cast<int64_t>(nthreads) * per, T(0));
  std::vector<T> z(B * D), gh(B * H, 0), dz(B * D);
  if (g_h) std::copy(g_h, g_h + B * H, gh.begin());
  const int64_t nb = block_size(H, D, 6, sizeof(T)), nb_re = block_size(H, D, 3, sizeof(T));
  const int64_t BHD = B * H * D, checkpoints = (Tn - 1) / every;
  T* seg = const_cast<T*>(Fs) + checkpoints * BHD;  // the forward's scratch slabs, reused
#pragma omp parallel num_threads(nthreads)
  {
    const FlushDenormals flush;
    int64_t b0, b1;
    sample_range(B, b0, b1);
    T* dWt = acc.data() + static_cast<int64_t>(omp_get_thread_num()) * per;
    T* dLt = dWt + H * D;
    T* dGt = dLt + H * D;
    T* dbt = dGt + H * D;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const int64_t t0 = t - t % every;  // this segment's checkpoint step
      const T* start = t0 == 0 ? F0 : Fs + (t0 / every - 1) * BHD;
      if (t % every != 0 && (t == Tn - 1 || (t + 1) % every == 0)) {  // entering the segment
        recompute_segment<T, NORM, VAR>(x, h0, W, L, G, out, N, lens, b0, b1, Tn, I, H, D,
                                        recurrent, eps, var, start, seg, BHD, t0, t, z.data(),
                                        nb_re);
      }
      const T* F = t == t0 ? start : seg + (t - t0 - 1) * BHD;
      for (int64_t b = b0; b < b1; ++b) {
        if (lens && t >= lens[b]) continue;  // padding: no gradient flows through it
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
          if (lens && t >= lens[b]) continue;
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
            if constexpr (VAR) {
              const T a = NORM && !post ? T(1) / N[kt] : T(1);
              const T rm = post ? var.M[kt] : T(0);
              variant_grad_row<T>(f, u, w, l, g, zb, out[kt], a, var, rm, eps, dWi, D);
            }
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
              T dn = -((post ? T(0) : c1) + dpre * S[kt]) * iv * iv;
              if (POW) dn -= gp * P[kt] * iv;
              kk = r > T(0) ? dn / r : T(0);
            }
            const T a = dpre * iv, gpn = gp * iv, gpn2 = T(2) * gpn, ivu = post ? T(1) : iv;
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
              dLi[j] += uj * fj * ivu;
              dGi[j] += uj * h * zj;
              T dzj = g[j] * uj * h + Gj * a;
              if (POW) dzj += gpn2 * zj * std::abs(Gj);
              dzb[j] += dzj;
              u[j] = l[j] * uj * ivu + dGj;
            }
          }
        }
      }
      for (int64_t b = b0; b < b1; ++b) {
        if (lens && t >= lens[b]) {
          std::fill(dx + (b * Tn + t) * I, dx + (b * Tn + t + 1) * I, T(0));
          continue;
        }
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

// Large buffers are reused instead of allocated anew on every call: faulting in fresh pages (the
// kernel zeroes each one) cost about a third of a sampling step and of a training forward. A
// buffer is handed out again only once nothing references it any more (no tensor, view or numpy
// array of it is alive), so a state a caller still holds is never overwritten.
// - The new F (and the spare F of a multi-step call without autograd): a few buffers of exact
//   sizes, at most kOutputs of them (the sizes of one run rarely vary).
// - The saved states F_1..F_{T-1} of a training forward (hundreds of MB at the Pong size): one
//   buffer, large enough for the largest call so far once it is free, so a run whose batches
//   vary in size holds one of them, not one per size.
// Pooled buffers live until `release()` (or the process's end).
struct Pool {
  std::mutex mutex;
  std::vector<Tensor> outputs;
  Tensor saved;
};
constexpr size_t kOutputs = 4;

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: it must outlive no allocator at exit
  return *p;
}

bool unreferenced(const Tensor& t) {
  return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1;
}

Tensor pooled_output(at::IntArrayRef sizes, const at::TensorOptions& o) {
  int64_t n = 1;
  for (const int64_t d : sizes) n *= d;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (const Tensor& t : p.outputs) {
    if (unreferenced(t) && t.numel() == n && t.scalar_type() == o.dtype().toScalarType()) {
      return t.view(sizes);
    }
  }
  Tensor t = uninit({n}, o);
  if (p.outputs.size() < kOutputs) {
    p.outputs.push_back(t);
  } else {
    const auto unused = std::find_if(p.outputs.begin(), p.outputs.end(), unreferenced);
    if (unused != p.outputs.end()) *unused = t;
  }
  return t.view(sizes);
}

Tensor pooled_saved_states(at::IntArrayRef sizes, const at::TensorOptions& o) {
  int64_t n = 1;
  for (const int64_t d : sizes) n *= d;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const bool same_type = p.saved.defined() && p.saved.scalar_type() == o.dtype().toScalarType();
  if (unreferenced(p.saved) && same_type && p.saved.numel() >= n) {
    return p.saved.narrow(0, 0, n).view(sizes);
  }
  Tensor t = advise_huge(uninit({n}, o));
  if (!p.saved.defined() || unreferenced(p.saved)) p.saved = t;  // the old one is freed
  return t.view(sizes);
}

// Drops the pooled buffers nothing references (the memory goes back to the allocator).
void release_buffers() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  p.outputs.erase(std::remove_if(p.outputs.begin(), p.outputs.end(), unreferenced),
                  p.outputs.end());
  if (unreferenced(p.saved)) p.saved = Tensor();
}

// Calls f(NORM, POW, VAR) with the three flags as compile-time constants (std::bool_constant).
template <typename Fn>
void with_flags(bool norm, bool pow, bool var, Fn&& f) {
  auto third = [&](auto n, auto p) {
    if (var) f(n, p, std::true_type{});
    else f(n, p, std::false_type{});
  };
  auto second = [&](auto n) {
    if (pow) third(n, std::true_type{});
    else third(n, std::false_type{});
  };
  if (norm) second(std::true_type{});
  else second(std::false_type{});
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

Tensor opt_contig(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

// Per-sample sequence lengths (int64, in [0, Tn]) or none (every sample runs all Tn steps).
const int64_t* lens_or_null(const Tensor& lens, int64_t B, int64_t Tn) {
  if (!lens.defined()) return nullptr;
  TORCH_CHECK(lens.scalar_type() == at::kLong && lens.dim() == 1 && lens.size(0) == B,
              "stpn: lens must be an int64 tensor of shape (B,)");
  const int64_t* p = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(p[b] >= 0 && p[b] <= Tn, "stpn: lens values must lie in [0, T]");
  }
  return p;
}

std::vector<Tensor> stpn_forward(const Tensor& x_, const Tensor& h0_, const Tensor& F0_,
                                 const Tensor& W_, const std::optional<Tensor>& bias_,
                                 const Tensor& L_, const Tensor& G_,
                                 const std::optional<Tensor>& lens_, bool recurrent,
                                 bool normalize, bool power, bool keep, double eps,
                                 double clamp, bool post, int64_t every) {
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), F0 = F0_.contiguous();
  const Tensor W = W_.contiguous(), L = L_.contiguous(), G = G_.contiguous();
  const Tensor bias = opt_contig(bias_), lens = opt_contig(lens_);
  const int64_t B = x.size(0), Tn = x.size(1), I = x.size(2), H = W.size(0), D = W.size(1);
  const int64_t* len = lens_or_null(lens, B, Tn);
  const auto o = x.options();
  Tensor out = uninit({B, Tn, H}, o), S = uninit({B, Tn, H}, o);
  Tensor N = normalize ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor R = normalize ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor P = power ? uninit({B, Tn, H}, o) : uninit({0}, o);
  Tensor M = post ? uninit({B, Tn, H}, o) : uninit({0}, o);
  const bool var = post || clamp < std::numeric_limits<double>::infinity();
  Tensor FT = pooled_output({B, H, D}, o);
  TORCH_CHECK(every >= 1, "stpn: checkpoint interval must be >= 1, got ", every);
  // Checkpoints F_k, F_2k, ... plus the scratch slabs: two for the forward, k - 1 for the
  // backward's recomputed segment (the same memory).
  const int64_t checkpoints = (Tn - 1) / every;
  const int64_t slabs = checkpoints + (every > 1 ? std::max<int64_t>(every - 1, 2) : 0);
  Tensor Fs = (keep && Tn > 1) ? pooled_saved_states({slabs, B, H, D}, o) : uninit({0}, o);
  Tensor spare = (!keep && Tn > 1) ? pooled_output({B, H, D}, o) : uninit({0}, o);
  const int nt = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_forward", [&] {
    using T = scalar_t;
    const FDest<T> dst{FT.data_ptr<T>(), keep && Tn > 1 ? Fs.data_ptr<T>() : nullptr,
                       !keep && Tn > 1 ? spare.data_ptr<T>() : nullptr, B * H * D, keep, every,
                       checkpoints};
    const Variant<T> variant{static_cast<T>(clamp), post, const_cast<T*>(ptr_or_null<T>(M))};
    with_flags(normalize, power, var, [&](auto NORM, auto POW, auto VAR) {
      constexpr bool n = decltype(NORM)::value, p = decltype(POW)::value;
      constexpr bool v = decltype(VAR)::value;
      if (Tn == 1) {
        fwd_one_step<T, n, p, v>(x.data_ptr<T>(), h0.data_ptr<T>(), F0.data_ptr<T>(),
                                 W.data_ptr<T>(), ptr_or_null<T>(bias), L.data_ptr<T>(),
                                 G.data_ptr<T>(), len, B, I, H, D, recurrent,
                                 static_cast<T>(eps), variant, FT.data_ptr<T>(),
                                 out.data_ptr<T>(), S.data_ptr<T>(),
                                 const_cast<T*>(ptr_or_null<T>(N)),
                                 const_cast<T*>(ptr_or_null<T>(R)),
                                 const_cast<T*>(ptr_or_null<T>(P)), nt);
        return;
      }
      fwd_kernel<T, n, p, v>(x.data_ptr<T>(), h0.data_ptr<T>(), F0.data_ptr<T>(),
                             W.data_ptr<T>(), ptr_or_null<T>(bias), L.data_ptr<T>(),
                             G.data_ptr<T>(), len, B, Tn, I, H, D, recurrent,
                             static_cast<T>(eps), variant, dst, out.data_ptr<T>(),
                             S.data_ptr<T>(), const_cast<T*>(ptr_or_null<T>(N)),
                             const_cast<T*>(ptr_or_null<T>(R)),
                             const_cast<T*>(ptr_or_null<T>(P)), nt);
    });
  });
  return {out, FT, Fs, S, N, R, P, M};
}

std::vector<Tensor> stpn_backward(const Tensor& x_, const Tensor& h0_, const Tensor& F0_,
                                  const Tensor& Fs_, const Tensor& W_, const Tensor& L_,
                                  const Tensor& G_, const Tensor& out_, const Tensor& S_,
                                  const Tensor& N_, const Tensor& R_, const Tensor& P_,
                                  const Tensor& M_, const std::optional<Tensor>& g_out_,
                                  const std::optional<Tensor>& g_h_,
                                  const std::optional<Tensor>& g_P_, Tensor& gF,
                                  const std::optional<Tensor>& lens_, bool recurrent,
                                  bool normalize, double eps, double clamp, bool post,
                                  int64_t every) {
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous(), F0 = F0_.contiguous();
  const Tensor Fs = Fs_.contiguous(), W = W_.contiguous(), L = L_.contiguous();
  const Tensor G = G_.contiguous(), out = out_.contiguous(), S = S_.contiguous();
  const Tensor N = N_.contiguous(), R = R_.contiguous(), P = P_.contiguous();
  const Tensor M = M_.contiguous();
  const bool var = post || clamp < std::numeric_limits<double>::infinity();
  const Tensor g_out = opt_contig(g_out_), g_h = opt_contig(g_h_), g_P = opt_contig(g_P_);
  const Tensor lens = opt_contig(lens_);
  TORCH_CHECK(gF.is_contiguous(), "stpn_backward: gF must be contiguous");
  const bool power = g_P.defined();
  const int64_t B = x.size(0), Tn = x.size(1), I = x.size(2), H = W.size(0), D = W.size(1);
  const int64_t* len = lens_or_null(lens, B, Tn);
  Tensor dx = uninit(x.sizes(), x.options()), dh0 = uninit(h0.sizes(), h0.options());
  Tensor dW = at::zeros_like(W), dL = at::zeros_like(W), dG = at::zeros_like(W);
  Tensor db = at::zeros({H}, W.options());
  const int nt = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stpn_backward", [&] {
    using T = scalar_t;
    const Variant<T> variant{static_cast<T>(clamp), post, const_cast<T*>(ptr_or_null<T>(M))};
    with_flags(normalize, power, var, [&](auto NORM, auto POW, auto VAR) {
      bwd_kernel<T, decltype(NORM)::value, decltype(POW)::value, decltype(VAR)::value>(
          x.data_ptr<T>(), h0.data_ptr<T>(), F0.data_ptr<T>(), ptr_or_null<T>(Fs),
          W.data_ptr<T>(), L.data_ptr<T>(), G.data_ptr<T>(), out.data_ptr<T>(),
          S.data_ptr<T>(), ptr_or_null<T>(N), ptr_or_null<T>(R), ptr_or_null<T>(P),
          ptr_or_null<T>(g_out), ptr_or_null<T>(g_h), ptr_or_null<T>(g_P), gF.data_ptr<T>(),
          len, B, Tn, I, H, D, recurrent, static_cast<T>(eps), variant, every, dx.data_ptr<T>(),
          dh0.data_ptr<T>(), dW.data_ptr<T>(), db.data_ptr<T>(), dL.data_ptr<T>(),
          dG.data_ptr<T>(), nt);
    });
  });
  return {dx, dh0, dW, db, dL, dG};
}

}  // namespace

// STPN_NAMESPACE is defined on the compiler's command line (rllib_stpn_fused_<hash>), so builds
// of different sources or flags never collide in one process or cache directory.
TORCH_LIBRARY(STPN_NAMESPACE, m) {
  m.def("forward(Tensor x, Tensor h0, Tensor F0, Tensor W, Tensor? bias, Tensor lam, "
        "Tensor gam, Tensor? lens, bool recurrent, bool normalize, bool power, bool keep, "
        "float eps, float clamp, bool post, int every) -> Tensor[]", &stpn_forward);
  m.def("backward(Tensor x, Tensor h0, Tensor F0, Tensor Fs, Tensor W, Tensor lam, "
        "Tensor gam, Tensor out, Tensor S, Tensor N, Tensor R, Tensor P, Tensor M, "
        "Tensor? g_out, Tensor? g_h, Tensor? g_P, Tensor(a!) gF, Tensor? lens, "
        "bool recurrent, bool normalize, float eps, float clamp, bool post, int every) "
        "-> Tensor[]",
        &stpn_backward);
  m.def("release() -> ()", &release_buffers);
}
