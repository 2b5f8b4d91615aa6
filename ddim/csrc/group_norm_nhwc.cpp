// GroupNorm (+ SiLU) for channels_last float32 tensors on the CPU, forward and backward, one sample per task.
//
// PyTorch's CPU GroupNorm is several times slower on channels_last (NHWC) input than on NCHW, and the SiLU after
// it is one more pass over memory. Here each sample's (H*W, C) slab is read while it sits in cache: two passes for
// the statistics, one that writes the output (or, backward, one for the sums and one that writes dx).
// Sums run in float over blocks of rows and in double across blocks, so the error does not grow with H*W.
// Every result depends only on its own sample: bit-identical for any number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kRows = 64;  // rows summed in float before the sum moves to double

// exp(x) by Cody-Waite range reduction and a degree-6 polynomial (Cephes' expf), written without branches or
// library calls so the compiler vectorises the loops it sits in; within 2 ulp of expf over the clamped range.
// n = round(x / ln 2) comes from adding 1.5 * 2^23 (the float's low bits then hold n), so no float-to-int
// conversion is ever undefined: a NaN x gives some bits and a NaN result.
inline float vexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23
  const float shifted = x * 1.44269504088896341f + kShifter;
  const float n = shifted - kShifter;
  const uint32_t i = __builtin_bit_cast(uint32_t, shifted) - 0x4B400000u;  // n, as a two's-complement integer
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  return e * __builtin_bit_cast(float, (i + 127u) << 23);  // e * 2^n
}

// SiLU's sigmoid 1 / (1 + exp(-z)); 0 below z = -88, where exp(-z) is past the clamp (and past float's range soon
// after), so z * sigmoid(z) is -0 there as PyTorch gives it.
inline float vsigmoid(float z) {
  const float s = 1.0f / (1.0f + vexp(-z));
  return z < -88.0f ? 0.0f : s;
}

// Per-channel sums over a slab's rows of f(row, c), into tot (length C).
template <typename F>
void channel_sums(int64_t rows, int64_t C, float* acc, double* tot, F f) {
  std::fill(tot, tot + C, 0.0);
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    std::fill(acc, acc + C, 0.0f);
    const int64_t r1 = std::min(rows, r0 + kRows);
    for (int64_t r = r0; r < r1; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += f(r, c);
    }
    for (int64_t c = 0; c < C; ++c) tot[c] += acc[c];
  }
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
}

}  // namespace

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                int64_t groups, double eps, bool silu) {
  check(x, "x");
  check(weight, "weight");
  check(bias, "bias");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), "x must be channels_last 4-D");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(groups > 0 && C % groups == 0, "channels must divide into groups");
  TORCH_CHECK(weight.numel() == C && bias.numel() == C, "weight and bias need one value per channel");
  const int64_t D = C / groups;
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor mean = at::empty({N, groups}, x.options());
  at::Tensor rstd = at::empty({N, groups}, x.options());
  const float* X = x.data_ptr<float>();
  const float* Wt = w.data_ptr<float>();
  const float* Bs = b.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  float* Mu = mean.data_ptr<float>();
  float* Rs = rstd.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(C), mc(C), a(C);
    std::vector<double> tot(C);
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = X + n * HW * C;
      float* yn = Y + n * HW * C;
      const float* m = mc.data();
      channel_sums(HW, C, acc.data(), tot.data(), [&](int64_t r, int64_t c) { return xn[r * C + c]; });
      for (int64_t g = 0; g < groups; ++g) {
        double sum = 0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) sum += tot[c];
        const float mu = static_cast<float>(sum / static_cast<double>(HW * D));
        Mu[n * groups + g] = mu;
        std::fill(mc.begin() + g * D, mc.begin() + (g + 1) * D, mu);
      }
      channel_sums(HW, C, acc.data(), tot.data(), [&](int64_t r, int64_t c) {
        const float d = xn[r * C + c] - m[c];
        return d * d;
      });
      for (int64_t g = 0; g < groups; ++g) {
        double sum = 0;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) sum += tot[c];
        const float rs = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(HW * D) + eps));
        Rs[n * groups + g] = rs;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          a[c] = rs * Wt[c];  // z = (x - mean) * a + bias
        }
      }
      const float* pa = a.data();
      for (int64_t r = 0; r < HW; ++r) {
        const float* xr = xn + r * C;
        float* yr = yn + r * C;
        if (silu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float z = (xr[c] - m[c]) * pa[c] + Bs[c];
            yr[c] = z * vsigmoid(z);
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m[c]) * pa[c] + Bs[c];
        }
      }
    }
  });
  return {y, mean, rstd};
}

// Gradients of y = [SiLU](GroupNorm(x)) given dy: (dx, dweight, dbias). With z = x_hat * weight + bias,
// dz = dy * SiLU'(z), and per group of M = H*W*D elements
// dx = rstd * (dz * weight - mean(dz * weight) - x_hat * mean(dz * weight * x_hat)).
std::vector<at::Tensor> backward(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd,
                                 int64_t groups, bool silu) {
  check(x, "x");
  check(dy_in, "dy");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "x must be channels_last");
  const at::Tensor dy = dy_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), D = C / groups;
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  std::vector<double> dw_n(N * C), db_n(N * C);  // per-sample parts of dweight and dbias
  const float* X = x.data_ptr<float>();
  const float* DY = dy.data_ptr<float>();
  const float* Wt = w.data_ptr<float>();
  const float* Bs = b.data_ptr<float>();
  const float* Mu = mean.data_ptr<float>();
  const float* Rs = rstd.data_ptr<float>();
  float* DX = dx.data_ptr<float>();
  double* DWn = dw_n.data();
  double* DBn = db_n.data();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc1(C), acc2(C), a(C), mc(C), rc(C), k1(C), k2(C), dz(silu ? HW * C : 0);
    std::vector<double> sum_dz(C), sum_dzx(C);
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = X + n * HW * C;
      const float* dyn = DY + n * HW * C;
      float* dxn = DX + n * HW * C;
      for (int64_t g = 0; g < groups; ++g) {
        const float mu = Mu[n * groups + g], rs = Rs[n * groups + g];
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          mc[c] = mu;
          rc[c] = rs;
          a[c] = rs * Wt[c];
        }
      }
      const float *pa = a.data(), *pm = mc.data(), *pr = rc.data();
      float* pz = dz.data();
      float *s1 = acc1.data(), *s2 = acc2.data();
      // One pass: dz (kept for the second pass when SiLU makes it differ from dy) and, per channel, the sums of
      // dz and dz * x_hat, in float over blocks of rows and in double across blocks.
      std::fill(sum_dz.begin(), sum_dz.end(), 0.0);
      std::fill(sum_dzx.begin(), sum_dzx.end(), 0.0);
      for (int64_t r0 = 0; r0 < HW; r0 += kRows) {
        std::fill(acc1.begin(), acc1.end(), 0.0f);
        std::fill(acc2.begin(), acc2.end(), 0.0f);
        const int64_t r1 = std::min(HW, r0 + kRows);
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = xn + r * C;
          const float* dyr = dyn + r * C;
          if (silu) {
            float* zr = pz + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float xh = (xr[c] - pm[c]) * pr[c];
              const float z = xh * Wt[c] + Bs[c];
              const float sg = vsigmoid(z);
              const float d = dyr[c] * sg * (1.0f + z * (1.0f - sg));
              zr[c] = d;
              s1[c] += d;
              s2[c] += d * xh;
            }
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              s1[c] += dyr[c];
              s2[c] += dyr[c] * ((xr[c] - pm[c]) * pr[c]);
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          sum_dz[c] += acc1[c];
          sum_dzx[c] += acc2[c];
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        DBn[n * C + c] = sum_dz[c];
        DWn[n * C + c] = sum_dzx[c];
      }
      for (int64_t g = 0; g < groups; ++g) {
        double m1 = 0, m2 = 0;  // means over the group of dz * weight and dz * weight * x_hat
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          m1 += Wt[c] * sum_dz[c];
          m2 += Wt[c] * sum_dzx[c];
        }
        m1 /= static_cast<double>(HW * D);
        m2 /= static_cast<double>(HW * D);
        const double rs = Rs[n * groups + g];
        // dx = dz * (rstd * weight) + (x - mean) * (-rstd^2 * m2) - rstd * m1
        const float kx = static_cast<float>(-rs * rs * m2), k0 = static_cast<float>(-rs * m1);
        std::fill(k1.begin() + g * D, k1.begin() + (g + 1) * D, kx);
        std::fill(k2.begin() + g * D, k2.begin() + (g + 1) * D, k0);
      }
      const float *p1 = k1.data(), *p2 = k2.data();
      const float* dzn = silu ? pz : dyn;
      for (int64_t r = 0; r < HW; ++r) {
        const float* xr = xn + r * C;
        const float* dzr = dzn + r * C;
        float* dxr = dxn + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxr[c] = dzr[c] * pa[c] + (xr[c] - pm[c]) * p1[c] + p2[c];
      }
    }
  });
  // The per-sample parts summed in sample order (double), whatever the number of threads.
  at::Tensor dweight = at::empty({C}, x.options()), dbias = at::empty({C}, x.options());
  float *DW = dweight.data_ptr<float>(), *DB = dbias.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      sw += DWn[n * C + c];
      sb += DBn[n * C + c];
    }
    DW[c] = static_cast<float>(sw);
    DB[c] = static_cast<float>(sb);
  }
  return {dx, dweight, dbias};
}

// How many threads at::parallel_for spreads n items over: 1 when the build lacks OpenMP (its serial fallback).
int64_t parallel_width(int64_t n) {
  std::mutex lock;
  std::set<int> seen;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> hold(lock);
    seen.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(seen.size());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_width", &parallel_width, "threads at::parallel_for uses for n items (a check of the build)");
  m.def("forward", &forward, "GroupNorm (+ SiLU) forward on channels_last float32 CPU tensors");
  m.def("backward", &backward, "its backward: dx, dweight, dbias");
}
