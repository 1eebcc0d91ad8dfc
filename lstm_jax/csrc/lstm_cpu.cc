// The LSTM and GRU recurrences on CPU as XLA FFI calls: each thread of XLA's intra-op pool runs its own rows of the
// batch through every time step (rows are independent, so threads never wait on each other mid-sequence).
// Built on first use by lstm_jax/native.py; the JAX side (weight and input gradients) is in fused.py.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 4;
#endif
typedef float Vec __attribute__((vector_size(kLanes * 4)));

inline Vec load(const float* p) { Vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// ------------------------------------------------------------------------------------------ matmul
// W [K, N] is packed into column panels of width 2*kLanes (then kLanes, then the rest), each k-major and
// contiguous at offset K*j: a panel streams from L1 while a tile of rows passes it (a row-major W with a
// power-of-two N maps every row of a tile onto one cache set).
struct Packed {
  std::vector<float> data;
  int64_t k = 0, n = 0;
};

// element (k, n) of the matrix is src[k * stride_k + n * stride_n]
Packed pack(const float* src, int64_t K, int64_t N, int64_t stride_k, int64_t stride_n) {
  Packed p{std::vector<float>(K * N), K, N};
  for (int64_t j = 0; j < N;) {
    int64_t w = N - j >= 2 * kLanes ? 2 * kLanes : std::min<int64_t>(kLanes, N - j);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < w; ++c) p.data[K * j + k * w + c] = src[k * stride_k + (j + c) * stride_n];
    j += w;
  }
  return p;
}

template <int R, int NV>
inline void tile(const float* a, int64_t lda, const float* panel, int64_t K, float* c, int64_t ldc) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(c + r * ldc + v * kLanes);
  for (int64_t k = 0; k < K; ++k) {
    Vec w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load(panel + (k * NV + v) * kLanes);
    for (int r = 0; r < R; ++r) {
      Vec x = Vec{} + a[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += x * w[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
}

template <int R>
void row_tile(const float* a, int64_t lda, const Packed& w, float* c, int64_t ldc) {
  const int64_t K = w.k, N = w.n;
  int64_t j = 0;
  for (; j + 2 * kLanes <= N; j += 2 * kLanes) tile<R, 2>(a, lda, w.data.data() + K * j, K, c + j, ldc);
  for (; j + kLanes <= N; j += kLanes) tile<R, 1>(a, lda, w.data.data() + K * j, K, c + j, ldc);
  const int64_t width = N - j;
  const float* panel = w.data.data() + K * j;
  for (int64_t col = 0; col < width; ++col)
    for (int r = 0; r < R; ++r) {
      float sum = c[r * ldc + j + col];
      for (int64_t k = 0; k < K; ++k) sum += a[r * lda + k] * panel[k * width + col];
      c[r * ldc + j + col] = sum;
    }
}

// c[m, :] += a[m, :] @ W for m < rows (a: row stride lda; c: row stride ldc). (Blocking the depth so a panel
// stays in L1 measured slower: the panels stream from L2 well enough.)
void add_matmul(const float* a, int64_t lda, const Packed& w, float* c, int64_t ldc, int64_t rows) {
  constexpr int kRows = 6;  // 6 rows x 2 vectors = 12 accumulators, within 16 (AVX2) or 32 (AVX-512) registers
  int64_t m = 0;
  for (; m + kRows <= rows; m += kRows) row_tile<kRows>(a + m * lda, lda, w, c + m * ldc, ldc);
  const float* a_rest = a + m * lda;
  float* c_rest = c + m * ldc;
  switch (rows - m) {
    case 5: row_tile<5>(a_rest, lda, w, c_rest, ldc); break;
    case 4: row_tile<4>(a_rest, lda, w, c_rest, ldc); break;
    case 3: row_tile<3>(a_rest, lda, w, c_rest, ldc); break;
    case 2: row_tile<2>(a_rest, lda, w, c_rest, ldc); break;
    case 1: row_tile<1>(a_rest, lda, w, c_rest, ldc); break;
    default: break;
  }
}

// ------------------------------------------------------------------------------------------ activations
// exp by range reduction: x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor polynomial to r^7 (relative error
// below 2e-7), times 2^n built in the exponent bits. Written once for floats and for vectors (libm's
// scalar expf would cost more than the matmul; its vector forms are not on every system).
typedef int32_t IVec __attribute__((vector_size(kLanes * 4)));
inline float from_bits(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline Vec from_bits(IVec i) { Vec f; std::memcpy(&f, &i, sizeof f); return f; }
inline float to_float(int32_t n) { return static_cast<float>(n); }
inline Vec to_float(IVec n) { return __builtin_convertvector(n, Vec); }
inline int32_t nearest_int(float x) { return static_cast<int32_t>(std::floor(x + 0.5f)); }
inline IVec nearest_int(Vec x) {
  Vec up = x + 0.5f;
  IVec n = __builtin_convertvector(up, IVec);  // rounds toward zero, so one too high below zero
  return n + (to_float(n) > up);               // a true comparison is -1
}
inline float clamp(float x, float lo, float hi) { return std::min(std::max(x, lo), hi); }
inline Vec clamp(Vec x, float lo, float hi) {
  Vec low = Vec{} + lo, high = Vec{} + hi;
  x = x < low ? low : x;
  return x > high ? high : x;
}

template <typename T>
inline T exp_approx(T x) {
  x = clamp(x, -87.0f, 88.0f);
  auto n = nearest_int(x * 1.44269504f);
  T r = (x - to_float(n) * 0.693145752f) - to_float(n) * 1.42860677e-06f;  // ln 2 in two parts
  T p = T{} + 1.0f / 5040;
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = p * r + c;
  return p * from_bits((n + 127) << 23);
}

template <typename T>
inline T sigmoid(T x) { return 1.0f / (1.0f + exp_approx<T>(-x)); }
// tanh through exp loses relative precision near 0 (1 - e^{-2x} cancels), so |x| < 0.5 takes the Taylor series
// to x^15 (relative error below 1e-7 in float32 there, and about 3e-7 for the exp form above).
template <typename T>
inline T tanh_approx(T x) {
  T through_exp = 2.0f / (1.0f + exp_approx<T>(-2.0f * x)) - 1.0f;
  T x2 = x * x, series = T{} - 929569.0f / 638512875;
  for (float c : {21844.0f / 6081075, -1382.0f / 155925, 62.0f / 2835, -17.0f / 315, 2.0f / 15, -1.0f / 3, 1.0f})
    series = series * x2 + c;
  return x2 < T{} + 0.25f ? series * x : through_exp;
}

// ------------------------------------------------------------------------------------------ threads
// Runs work(begin, end) over [0, rows) in up to pool.num_threads() contiguous parts. Parts are claimed from a
// counter and the calling thread claims too, so the call finishes even when no pool thread ever comes free.
template <typename Work>
void parallel_rows(ffi::ThreadPool& pool, int64_t rows, int64_t min_rows, Work work) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), rows / min_rows));
  if (parts == 1) return work(int64_t{0}, rows);
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  // A pool task that starts after the call returned finds no part left and touches only `progress`.
  auto claim_parts = [progress, parts, rows, work = &work]() {
    for (int64_t p; (p = progress->next.fetch_add(1)) < parts;) {
      (*work)(rows * p / parts, rows * (p + 1) / parts);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < parts; ++i) pool.Schedule([claim_parts] { claim_parts(); });
  claim_parts();
  while (progress->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// ------------------------------------------------------------------------------------------ forward
struct Saved {  // what the backward pass reads, each [T, B, *]; null in inference
  float *c_prev = nullptr, *h_prev = nullptr, *gates = nullptr, *tanh_c = nullptr;
};

template <typename T> inline T ld(const float* p);
template <> inline float ld<float>(const float* p) { return *p; }
template <> inline Vec ld<Vec>(const float* p) { return load(p); }
inline void st(float* p, float v) { *p = v; }
inline void st(float* p, Vec v) { store(p, v); }

// Calls step(lanes, j) over hidden units [0, H): whole vectors first (lanes a Vec), then one float at a time.
template <typename Step>
inline void over_units(int64_t H, Step step) {
  int64_t j = 0;
  for (; j + kLanes <= H; j += kLanes) step(Vec{}, j);
  for (; j < H; ++j) step(0.0f, j);
}

// Hidden units [j, j + lanes of T) of one row: activates the gates z in place and steps the carry (c, h).
template <typename T>
inline void gates_forward(float* z, int64_t H, int64_t j, float* c, float* h, float* y, float* tanh_c, bool keep) {
  T i = sigmoid(ld<T>(z + j)), f = sigmoid(ld<T>(z + H + j));
  T g = tanh_approx(ld<T>(z + 2 * H + j)), o = sigmoid(ld<T>(z + 3 * H + j));
  st(z + j, i), st(z + H + j, f), st(z + 2 * H + j, g), st(z + 3 * H + j, o);
  T c_new = f * ld<T>(c + j) + i * g;
  T tc = tanh_approx(c_new);
  T h_new = o * tc;
  if (tanh_c) st(tanh_c + j, tc);
  st(y + j, keep ? h_new : T{});
  if (keep) st(c + j, c_new), st(h + j, h_new);
}

struct Step {  // one call's shapes and inputs; x [T, B, F], mask [T, B]
  int64_t T, B, F, H;
  const float *x, *bias;
  const bool* mask;
};

// Rows [b0, b1) through all T steps: z = [x_t | h] [W_x; W_h] + b is one matmul per step, and a = [x_t | h]
// holds the hidden state between steps. c [B, H] holds the cell state in place; h [B, H] gets the last h.
void forward_rows(const Step& s, int64_t b0, int64_t b1, const Packed& w, float* y, float* c, float* h, Saved saved) {
  const int64_t rows = b1 - b0, H = s.H, G = 4 * H, K = s.F + H;
  std::vector<float> a(rows * K), z_scratch(saved.gates ? 0 : rows * G);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(&a[r * K + s.F], h + (b0 + r) * H, sizeof(float) * H);
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t row0 = t * s.B + b0;
    float* z = saved.gates ? saved.gates + row0 * G : z_scratch.data();
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(&a[r * K], s.x + (row0 + r) * s.F, sizeof(float) * s.F);
      std::memcpy(z + r * G, s.bias, sizeof(float) * G);
      if (saved.c_prev) {
        std::memcpy(saved.c_prev + (row0 + r) * H, c + (b0 + r) * H, sizeof(float) * H);
        std::memcpy(saved.h_prev + (row0 + r) * H, &a[r * K + s.F], sizeof(float) * H);
      }
    }
    add_matmul(a.data(), K, w, z, G, rows);
    for (int64_t r = 0; r < rows; ++r) {
      float *zr = z + r * G, *cr = c + (b0 + r) * H, *hr = &a[r * K + s.F], *yr = y + (row0 + r) * H;
      float* tanh_c = saved.tanh_c ? saved.tanh_c + (row0 + r) * H : nullptr;
      const bool keep = s.mask[row0 + r];
      over_units(H, [&](auto lanes, int64_t j) {
        gates_forward<decltype(lanes)>(zr, H, j, cr, hr, yr, tanh_c, keep);
      });
    }
  }
  for (int64_t r = 0; r < rows; ++r) std::memcpy(h + (b0 + r) * H, &a[r * K + s.F], sizeof(float) * H);
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using Pred = ffi::Buffer<ffi::PRED>;

ffi::Error forward(ffi::ThreadPool& pool, F32 x, F32 w_x, F32 bias, F32 w_h, Pred mask, F32 c0, F32 h0, F32Out y,
                   F32Out c, F32Out h, Saved saved) {
  auto xd = x.dimensions(), wd = w_h.dimensions();
  if (xd.size() != 3 || wd.size() != 2 || wd[1] != 4 * wd[0] || w_x.dimensions()[0] != xd[2])
    return ffi::Error::InvalidArgument("lstm_cpu: expected x [T, B, F], W_x [F, 4H], W_h [H, 4H]");
  const Step s{xd[0], xd[1], xd[2], wd[0], x.typed_data(), bias.typed_data(), mask.typed_data()};
  std::vector<float> stacked((s.F + s.H) * 4 * s.H);  // [W_x; W_h]
  std::memcpy(stacked.data(), w_x.typed_data(), sizeof(float) * s.F * 4 * s.H);
  std::memcpy(stacked.data() + s.F * 4 * s.H, w_h.typed_data(), sizeof(float) * s.H * 4 * s.H);
  const Packed packed = pack(stacked.data(), s.F + s.H, 4 * s.H, 4 * s.H, 1);
  std::memcpy(c->typed_data(), c0.typed_data(), sizeof(float) * s.B * s.H);
  std::memcpy(h->typed_data(), h0.typed_data(), sizeof(float) * s.B * s.H);
  parallel_rows(pool, s.B, 8, [&](int64_t b0, int64_t b1) {
    forward_rows(s, b0, b1, packed, y->typed_data(), c->typed_data(), h->typed_data(), saved);
  });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, F32 x, F32 w_x, F32 bias, F32 w_h, Pred mask, F32 c0, F32 h0, F32Out y,
                   F32Out c, F32Out h) {
  return forward(pool, x, w_x, bias, w_h, mask, c0, h0, y, c, h, Saved{});
}

ffi::Error ForwardSave(ffi::ThreadPool pool, F32 x, F32 w_x, F32 bias, F32 w_h, Pred mask, F32 c0, F32 h0, F32Out y,
                       F32Out c, F32Out h, F32Out c_prev, F32Out h_prev, F32Out gates, F32Out tanh_c) {
  return forward(pool, x, w_x, bias, w_h, mask, c0, h0, y, c, h,
                 Saved{c_prev->typed_data(), h_prev->typed_data(), gates->typed_data(), tanh_c->typed_data()});
}

// ------------------------------------------------------------------------------------------ backward
// Hidden units [j, j + lanes of T) of one row, one step back: the gates' gradient dz, and the carry's
// gradient (d_c, d_h) in place, d_h without its dz W_h^T term.
template <typename T>
inline void gates_backward(const float* gates, const float* c_prev, const float* tanh_c, const float* d_y, int64_t H,
                           int64_t j, float* dz, float* d_c, float* d_h, bool keep) {
  T i = ld<T>(gates + j), f = ld<T>(gates + H + j), g = ld<T>(gates + 2 * H + j), o = ld<T>(gates + 3 * H + j);
  T tc = ld<T>(tanh_c + j), dc = ld<T>(d_c + j), dh = ld<T>(d_h + j);
  T dh_new = keep ? dh + ld<T>(d_y + j) : T{};
  T dc_new = (keep ? dc : T{}) + dh_new * o * (1.0f - tc * tc);
  st(dz + j, dc_new * g * i * (1.0f - i));
  st(dz + H + j, dc_new * ld<T>(c_prev + j) * f * (1.0f - f));
  st(dz + 2 * H + j, dc_new * i * (1.0f - g * g));
  st(dz + 3 * H + j, dh_new * tc * o * (1.0f - o));
  st(d_c + j, dc_new * f + (keep ? T{} : dc));
  st(d_h + j, keep ? T{} : dh);
}

// Rows [b0, b1) backwards through time: row_step(t, b) writes a row's gates' gradient and the carry's gradient
// without its recurrent term, then d_h += dz_h W_h^T for the step (dz_h [T, B, G]: the gradient of h W_h).
template <typename RowStep>
void back_through_time(int64_t b0, int64_t b1, int64_t T, int64_t B, int64_t H, int64_t G, const Packed& w_h_t,
                       const float* dz_h, float* d_h, RowStep row_step) {
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t b = b0; b < b1; ++b) row_step(t, b);
    add_matmul(dz_h + (t * B + b0) * G, G, w_h_t, d_h + b0 * H, H, b1 - b0);
  }
}

ffi::Error Backward(ffi::ThreadPool pool, F32 d_y, F32 w_h, Pred mask, F32 c_prev, F32 gates, F32 tanh_c,
                    F32 d_c_final, F32 d_h_final, F32Out dz, F32Out d_c0, F32Out d_h0) {
  auto gd = gates.dimensions();
  if (gd.size() != 3 || w_h.dimensions()[1] != gd[2] || gd[2] != 4 * w_h.dimensions()[0])
    return ffi::Error::InvalidArgument("lstm_cpu: expected gates [T, B, 4H] and W_h [H, 4H]");
  const int64_t T = gd[0], B = gd[1], H = w_h.dimensions()[0], G = 4 * H;
  const Packed packed_t = pack(w_h.typed_data(), G, H, 1, G);  // W_h^T [4H, H]
  float *d_c = d_c0->typed_data(), *d_h = d_h0->typed_data(), *dz_all = dz->typed_data();
  std::memcpy(d_c, d_c_final.typed_data(), sizeof(float) * B * H);
  std::memcpy(d_h, d_h_final.typed_data(), sizeof(float) * B * H);
  parallel_rows(pool, B, 8, [&](int64_t b0, int64_t b1) {
    back_through_time(b0, b1, T, B, H, G, packed_t, dz_all, d_h, [&](int64_t t, int64_t b) {
      const int64_t at = (t * B + b) * H, gat = (t * B + b) * G;
      const bool keep = mask.typed_data()[t * B + b];
      over_units(H, [&](auto lanes, int64_t j) {
        gates_backward<decltype(lanes)>(gates.typed_data() + gat, c_prev.typed_data() + at, tanh_c.typed_data() + at,
                                        d_y.typed_data() + at, H, j, dz_all + gat, d_c + b * H, d_h + b * H, keep);
      });
    });
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------ GRU
// The reset-after GRU of lstm_jax.cells.GRUCell: zx = x_t W_x + b, zh = h W_h + b_h (columns [r | u | n]),
// r = sigmoid(zx_r + zh_r), u = sigmoid(zx_u + zh_u), n = tanh(zx_n + r * zh_n), h' = (1 - u) n + u h.
struct GruSaved {  // what the backward pass reads: h [T, B, H], gates [r | u | n] [T, B, 3H], zh_n [T, B, H]
  float *h_prev = nullptr, *gates = nullptr, *zh_n = nullptr;
};

// Hidden units [j, j + lanes of T) of one row: zh becomes the gates [r | u | n] in place; h steps.
template <typename T>
inline void gru_gates_forward(const float* zx, float* zh, int64_t H, int64_t j, float* h, float* y, float* zh_n,
                              bool keep) {
  T r = sigmoid(ld<T>(zx + j) + ld<T>(zh + j)), u = sigmoid(ld<T>(zx + H + j) + ld<T>(zh + H + j));
  T hn = ld<T>(zh + 2 * H + j);
  T n = tanh_approx(ld<T>(zx + 2 * H + j) + r * hn);
  T h_new = (1.0f - u) * n + u * ld<T>(h + j);
  st(zh + j, r), st(zh + H + j, u), st(zh + 2 * H + j, n);
  if (zh_n) st(zh_n + j, hn);
  st(y + j, keep ? h_new : T{});
  if (keep) st(h + j, h_new);
}

struct GruStep {  // x [T, B, F], mask [T, B], biases [3H]
  int64_t T, B, F, H;
  const float *x, *bias, *recurrent_bias;
  const bool* mask;
};

// Rows [b0, b1) through all T steps; h [B, H] holds the carry in place.
void gru_forward_rows(const GruStep& s, int64_t b0, int64_t b1, const Packed& w_x, const Packed& w_h, float* y,
                      float* h, GruSaved saved) {
  const int64_t rows = b1 - b0, H = s.H, G = 3 * H;
  std::vector<float> zx(rows * G), zh_scratch(saved.gates ? 0 : rows * G);
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t row0 = t * s.B + b0;
    float* zh = saved.gates ? saved.gates + row0 * G : zh_scratch.data();
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(&zx[r * G], s.bias, sizeof(float) * G);
      std::memcpy(zh + r * G, s.recurrent_bias, sizeof(float) * G);
      if (saved.h_prev) std::memcpy(saved.h_prev + (row0 + r) * H, h + (b0 + r) * H, sizeof(float) * H);
    }
    add_matmul(s.x + row0 * s.F, s.F, w_x, zx.data(), G, rows);
    add_matmul(h + b0 * H, H, w_h, zh, G, rows);
    for (int64_t r = 0; r < rows; ++r) {
      float *zhr = zh + r * G, *hr = h + (b0 + r) * H, *yr = y + (row0 + r) * H;
      float* zh_n = saved.zh_n ? saved.zh_n + (row0 + r) * H : nullptr;
      const bool keep = s.mask[row0 + r];
      over_units(H, [&](auto lanes, int64_t j) {
        gru_gates_forward<decltype(lanes)>(&zx[r * G], zhr, H, j, hr, yr, zh_n, keep);
      });
    }
  }
}

ffi::Error gru_forward(ffi::ThreadPool& pool, F32 x, F32 w_x, F32 bias, F32 w_h, F32 recurrent_bias, Pred mask,
                       F32 h0, F32Out y, F32Out h, GruSaved saved) {
  auto xd = x.dimensions(), wd = w_h.dimensions();
  if (xd.size() != 3 || wd.size() != 2 || wd[1] != 3 * wd[0] || w_x.dimensions()[0] != xd[2])
    return ffi::Error::InvalidArgument("gru_cpu: expected x [T, B, F], W_x [F, 3H], W_h [H, 3H]");
  const GruStep s{xd[0], xd[1], xd[2], wd[0], x.typed_data(), bias.typed_data(), recurrent_bias.typed_data(),
                  mask.typed_data()};
  const Packed packed_x = pack(w_x.typed_data(), s.F, 3 * s.H, 3 * s.H, 1);
  const Packed packed_h = pack(w_h.typed_data(), s.H, 3 * s.H, 3 * s.H, 1);
  std::memcpy(h->typed_data(), h0.typed_data(), sizeof(float) * s.B * s.H);
  parallel_rows(pool, s.B, 8, [&](int64_t b0, int64_t b1) {
    gru_forward_rows(s, b0, b1, packed_x, packed_h, y->typed_data(), h->typed_data(), saved);
  });
  return ffi::Error::Success();
}

ffi::Error GruForwardCall(ffi::ThreadPool pool, F32 x, F32 w_x, F32 bias, F32 w_h, F32 recurrent_bias, Pred mask,
                          F32 h0, F32Out y, F32Out h) {
  return gru_forward(pool, x, w_x, bias, w_h, recurrent_bias, mask, h0, y, h, GruSaved{});
}

ffi::Error GruForwardSaveCall(ffi::ThreadPool pool, F32 x, F32 w_x, F32 bias, F32 w_h, F32 recurrent_bias, Pred mask,
                          F32 h0, F32Out y, F32Out h, F32Out h_prev, F32Out gates, F32Out zh_n) {
  return gru_forward(pool, x, w_x, bias, w_h, recurrent_bias, mask, h0, y, h,
                     GruSaved{h_prev->typed_data(), gates->typed_data(), zh_n->typed_data()});
}

// Hidden units [j, j + lanes of T) of one row, one step back: the gradients of zx and zh, and d_h in place
// without its dzh W_h^T term.
template <typename T>
inline void gru_gates_backward(const float* gates, const float* zh_n, const float* h_prev, const float* d_y,
                               int64_t H, int64_t j, float* dzx, float* dzh, float* d_h, bool keep) {
  T r = ld<T>(gates + j), u = ld<T>(gates + H + j), n = ld<T>(gates + 2 * H + j), dh = ld<T>(d_h + j);
  T dh_new = keep ? dh + ld<T>(d_y + j) : T{};
  T dzn = dh_new * (1.0f - u) * (1.0f - n * n);
  T dzu = dh_new * (ld<T>(h_prev + j) - n) * u * (1.0f - u);
  T dzr = dzn * ld<T>(zh_n + j) * r * (1.0f - r);
  st(dzx + j, dzr), st(dzx + H + j, dzu), st(dzx + 2 * H + j, dzn);
  st(dzh + j, dzr), st(dzh + H + j, dzu), st(dzh + 2 * H + j, dzn * r);
  st(d_h + j, dh_new * u + (keep ? T{} : dh));
}

ffi::Error GruBackwardCall(ffi::ThreadPool pool, F32 d_y, F32 w_h, Pred mask, F32 h_prev, F32 gates, F32 zh_n,
                           F32 d_h_final, F32Out dzx, F32Out dzh, F32Out d_h0) {
  auto gd = gates.dimensions();
  if (gd.size() != 3 || w_h.dimensions()[1] != gd[2] || gd[2] != 3 * w_h.dimensions()[0])
    return ffi::Error::InvalidArgument("gru_cpu: expected gates [T, B, 3H] and W_h [H, 3H]");
  const int64_t T = gd[0], B = gd[1], H = w_h.dimensions()[0], G = 3 * H;
  const Packed packed_t = pack(w_h.typed_data(), G, H, 1, G);  // W_h^T [3H, H]
  float *d_h = d_h0->typed_data(), *dzx_all = dzx->typed_data(), *dzh_all = dzh->typed_data();
  std::memcpy(d_h, d_h_final.typed_data(), sizeof(float) * B * H);
  parallel_rows(pool, B, 8, [&](int64_t b0, int64_t b1) {
    back_through_time(b0, b1, T, B, H, G, packed_t, dzh_all, d_h, [&](int64_t t, int64_t b) {
      const int64_t at = (t * B + b) * H, gat = (t * B + b) * G;
      const bool keep = mask.typed_data()[t * B + b];
      over_units(H, [&](auto lanes, int64_t j) {
        gru_gates_backward<decltype(lanes)>(gates.typed_data() + gat, zh_n.typed_data() + at,
                                            h_prev.typed_data() + at, d_y.typed_data() + at, H, j, dzx_all + gat,
                                            dzh_all + gat, d_h + b * H, keep);
      });
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForward, Forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardSave, ForwardSave,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Pred>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackward, Backward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<Pred>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(GruForward, GruForwardCall,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<Pred>().Arg<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(GruForwardSave, GruForwardSaveCall,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<Pred>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(GruBackward, GruBackwardCall,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<Pred>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>());
