// ROIAlign forward and backward (w.r.t. the features) on NHWC float32 features.
//
// Semantics are those of jaxseg/kernels/roi_align.py ("xla"), i.e. torchvision.ops.roi_align:
// an output bin averages gh x gw bilinear samples; a sample at position y (feature pixels) is
// skipped unless -1 <= y <= H, is clamped to [0, H - 1] and reads rows floor(y) and
// min(floor(y) + 1, H - 1) with weights 1 - frac and frac. The grid is `sampling_ratio` per axis, or
// ceil(bin size) when sampling_ratio <= 0 ("adaptive"), never capped; in the adaptive case only
// the samples that can land inside [-1, H] are visited, so huge boxes cost O(map size).
//
// Per RoI and per axis, the samples of each bin are reduced to a short list of (row, summed
// weight) "taps"; the bin's value is sum_{ky, kx} wy * wx * F[row_y, col_x, :] / count. The
// backward pass scatters the same taps. It partitions the feature rows (batch, image, y) among the
// threads: every thread visits all RoIs but only writes the rows it owns, so there are no races
// and the result does not depend on the thread count.
#include <cmath>
#include <cstring>

#include "common.h"

namespace jaxseg {
namespace {

// One tap: a feature row (or column) and the summed weight of the samples reading it.
struct Tap {
  int64_t index;
  float weight;
};

// The sampling grid of one RoI along one axis, computed in float32 exactly as the xla version.
struct AxisGrid {
  float start;     // start of bin 0, in feature pixels
  float bin_size;  // may be <= 0 or NaN for degenerate boxes
  int64_t grid;    // samples per bin (>= 0)
};

constexpr float kMaxGrid = 1073741824.0f;  // 2^30: the xla version's int32 bound on the grid

AxisGrid MakeAxis(float lo, float hi, float scale, int64_t bins, int64_t sampling_ratio, bool aligned) {
  const float offset = aligned ? 0.5f : 0.0f;
  const float start = lo * scale - offset;
  float size = (hi * scale - offset) - start;
  if (!aligned && size < 1.0f) size = 1.0f;  // NaN stays NaN, as jnp.maximum
  const float bin_size = size / static_cast<float>(bins);
  int64_t grid;
  if (sampling_ratio > 0) {
    grid = sampling_ratio;
  } else {
    const float g = std::ceil(bin_size);
    grid = g > 0.0f ? static_cast<int64_t>(std::min(g, kMaxGrid)) : 0;  // NaN -> 0
  }
  return {start, bin_size, grid};
}

// Adds `weight` to the tap of `index`. Samples come in monotone order, so a repeated row can only
// be one of the last few taps; anything else is appended (still correct, just one more tap).
inline void AddTap(std::vector<Tap>& taps, int64_t index, float weight) {
  const size_t n = taps.size();
  for (size_t k = n; k-- > 0 && k + 3 >= n;) {
    if (taps[k].index == index) {
      taps[k].weight += weight;
      return;
    }
  }
  taps.push_back({index, weight});
}

// The taps of bin `p` of `axis` on a map of `size` rows. `adaptive`: only visit the samples that
// may land inside [-1, size] (a superset, with margin for rounding; each is then checked exactly).
void BinTaps(const AxisGrid& axis, int64_t p, int64_t size, bool adaptive, std::vector<Tap>& taps) {
  taps.clear();
  const float bin_start = axis.start + static_cast<float>(p) * axis.bin_size;
  const float grid_f = static_cast<float>(std::max<int64_t>(axis.grid, 1));
  const float size_f = static_cast<float>(size);
  int64_t first = 0, end = axis.grid;
  if (adaptive) {
    const double step = static_cast<double>(axis.bin_size) / grid_f;
    if (!(step > 0.0)) return;  // no samples (also catches NaN)
    const double lo = (-1.0 - bin_start) / step - 0.5;
    const double hi = (size_f - bin_start) / step - 0.5;
    if (std::isnan(lo) || std::isnan(hi)) return;  // bin_start NaN (e.g. -inf + 0 * inf): no valid sample
    const double margin = 1.0 + 1e-5 * std::max(std::fabs(lo), std::fabs(hi));
    const double g = static_cast<double>(axis.grid);
    first = static_cast<int64_t>(std::clamp(std::floor(lo) - margin, 0.0, g));
    end = static_cast<int64_t>(std::clamp(std::floor(hi) + 1.0 + margin, 0.0, g));
  }
  for (int64_t i = first; i < end; ++i) {
    float pos = bin_start + ((static_cast<float>(i) + 0.5f) * axis.bin_size) / grid_f;
    if (!(pos >= -1.0f && pos <= size_f)) continue;  // outside (or NaN): reads nothing
    pos = std::min(std::max(pos, 0.0f), size_f - 1.0f);
    const float row = std::floor(pos);
    const float frac = pos - row;
    const int64_t r0 = static_cast<int64_t>(row);
    AddTap(taps, r0, 1.0f - frac);
    AddTap(taps, std::min(r0 + 1, size - 1), frac);
  }
}

// Geometry shared by forward and backward.
struct Params {
  int64_t n, h, w, c;  // features (per batch element)
  int64_t rois, ph, pw;
  float scale;
  int64_t sampling_ratio;
  bool aligned;
};

// The taps of every bin of one RoI, plus the normaliser (1 / count for the adaptive grid, whose
// xla version multiplies by the reciprocal; the static grid divides by count).
struct RoiTaps {
  std::vector<std::vector<Tap>> y, x;
  float count = 1.0f;
  bool adaptive = true;

  void Compute(const Params& p, const float* box) {
    const AxisGrid ay = MakeAxis(box[1], box[3], p.scale, p.ph, p.sampling_ratio, p.aligned);
    const AxisGrid ax = MakeAxis(box[0], box[2], p.scale, p.pw, p.sampling_ratio, p.aligned);
    adaptive = p.sampling_ratio <= 0;
    count = std::max(static_cast<float>(ay.grid) * static_cast<float>(ax.grid), 1.0f);
    y.resize(p.ph);
    x.resize(p.pw);
    for (int64_t i = 0; i < p.ph; ++i) BinTaps(ay, i, p.h, adaptive, y[i]);
    for (int64_t i = 0; i < p.pw; ++i) BinTaps(ax, i, p.w, adaptive, x[i]);
  }

  // Applies the normaliser to a bin's value, as the xla version does.
  float Normalise(float sum) const { return adaptive ? sum * (1.0f / count) : sum / count; }
};

// out[k] = normalise(sum_t weights[t] * srcs[t][k]) for k < c: sum * norm if `multiply`, else sum / norm.
// Channels go in blocks of 64 kept in four 16-float vector registers while all taps are added, so
// each output value is written once; the sum over taps runs in tap order.
JAXSEG_MULTIVERSION void WeightedSum(float* out, const float* const* srcs, const float* weights, size_t taps,
                                     int64_t c, float norm, bool multiply) {
  int64_t k0 = 0;
  for (; k0 + 4 * kVecWidth <= c; k0 += 4 * kVecWidth) {
    Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (size_t t = 0; t < taps; ++t) {
      const VecU* s = reinterpret_cast<const VecU*>(srcs[t] + k0);
      const float w = weights[t];
      a0 += w * s[0], a1 += w * s[1], a2 += w * s[2], a3 += w * s[3];
    }
    VecU* o = reinterpret_cast<VecU*>(out + k0);
    if (multiply) {
      o[0] = a0 * norm, o[1] = a1 * norm, o[2] = a2 * norm, o[3] = a3 * norm;
    } else {
      o[0] = a0 / norm, o[1] = a1 / norm, o[2] = a2 / norm, o[3] = a3 / norm;
    }
  }
  for (int64_t k = k0; k < c; ++k) {  // the remaining channels
    float acc = 0.0f;
    for (size_t t = 0; t < taps; ++t) acc += weights[t] * srcs[t][k];
    out[k] = multiply ? acc * norm : acc / norm;
  }
}

inline int64_t ClampIndex(int32_t b, int64_t n) { return std::min<int64_t>(std::max<int64_t>(b, 0), n - 1); }

// Checks the ranks of (features-like, boxes, batch_index, pooled-like) and fills `p` and the batch
// maps. `feat` has dims (..., N, H, W, C) and `pooled` (..., R, PH, PW, C); `feat_is_result` says
// which of the two is the result (and so defines the batch dims).
ffi::Error Prepare(ffi::Span<const int64_t> feat, ffi::Span<const int64_t> boxes, ffi::Span<const int64_t> bidx,
                   ffi::Span<const int64_t> pooled, bool feat_is_result, float scale, int64_t sampling_ratio,
                   bool aligned, Params& p, std::vector<int64_t> maps[4], int64_t& batch) {
  if (feat.size() < 4 || boxes.size() < 2 || bidx.size() < 1 || pooled.size() < 4) {
    return ffi::Error::InvalidArgument("roi_align: operands have too few dimensions");
  }
  const size_t lead = (feat_is_result ? feat.size() : pooled.size()) - 4;
  if (feat.size() - 4 != lead || boxes.size() - 2 != lead || bidx.size() - 1 != lead || pooled.size() - 4 != lead) {
    return ffi::Error::InvalidArgument("roi_align: operands have different numbers of batch dimensions");
  }
  p.n = feat[lead], p.h = feat[lead + 1], p.w = feat[lead + 2], p.c = feat[lead + 3];
  p.rois = pooled[lead], p.ph = pooled[lead + 1], p.pw = pooled[lead + 2];
  if (boxes[lead] != p.rois || boxes[lead + 1] != 4 || bidx[lead] != p.rois || pooled[lead + 3] != p.c) {
    return ffi::Error::InvalidArgument("roi_align: inconsistent operand shapes");
  }
  p.scale = scale, p.sampling_ratio = sampling_ratio, p.aligned = aligned;
  const std::vector<int64_t> out_lead = Lead(feat_is_result ? feat : pooled, lead);
  std::string error;
  const ffi::Span<const int64_t> dims[4] = {feat, boxes, bidx, pooled};
  for (int k = 0; k < 4; ++k) {
    if (!BatchMap(out_lead, dims[k], lead, maps[k], error)) return ffi::Error::InvalidArgument("roi_align: " + error);
  }
  batch = static_cast<int64_t>(maps[0].size());
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------------
// Forward: one work item per (batch element, RoI), dynamically scheduled.

ffi::Error RoiAlignForwardImpl(ffi::Buffer<ffi::F32> features, ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::S32> bidx,
                           ffi::ResultBuffer<ffi::F32> out, float spatial_scale, int64_t sampling_ratio,
                           bool aligned) {
  Params p;
  std::vector<int64_t> maps[4];
  int64_t batch = 0;
  ffi::Error err = Prepare(features.dimensions(), boxes.dimensions(), bidx.dimensions(), out->dimensions(), false,
                           spatial_scale, sampling_ratio, aligned, p, maps, batch);
  if (err.failure()) return err;
  float* out_data = out->typed_data();
  if (p.n == 0 || p.h == 0 || p.w == 0) {
    std::memset(out_data, 0, out->element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  const float* feat_data = features.typed_data();
  const float* box_data = boxes.typed_data();
  const int32_t* bidx_data = bidx.typed_data();
  const int64_t image = p.h * p.w * p.c, bin_out = p.c, roi_out = p.ph * p.pw * p.c;

  ParallelFor(batch * p.rois, 4, [&](int64_t begin, int64_t end) {
    RoiTaps taps;
    std::vector<const float*> srcs;
    std::vector<float> weights;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / p.rois, r = item % p.rois;
      const float* box = box_data + (maps[1][b] * p.rois + r) * 4;
      const int64_t img = ClampIndex(bidx_data[maps[2][b] * p.rois + r], p.n);
      const float* feat = feat_data + (maps[0][b] * p.n + img) * image;
      float* dst = out_data + (b * p.rois + r) * roi_out;
      taps.Compute(p, box);
      for (int64_t i = 0; i < p.ph; ++i) {
        for (int64_t j = 0; j < p.pw; ++j) {
          srcs.clear();
          weights.clear();
          for (const Tap& ty : taps.y[i]) {
            const float* row = feat + ty.index * p.w * p.c;
            for (const Tap& tx : taps.x[j]) {
              srcs.push_back(row + tx.index * p.c);
              weights.push_back(ty.weight * tx.weight);
            }
          }
          WeightedSum(dst + (i * p.pw + j) * bin_out, srcs.data(), weights.data(), srcs.size(), p.c,
                      taps.adaptive ? 1.0f / taps.count : taps.count, taps.adaptive);
        }
      }
    }
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------------
// Backward: d features = scatter of grad * taps. Thread t owns a contiguous range of feature rows
// (batch element, image, y) and applies only the taps that land in it.

ffi::Error RoiAlignBackwardImpl(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::S32> bidx,
                            ffi::ResultBuffer<ffi::F32> dfeatures, float spatial_scale, int64_t sampling_ratio,
                            bool aligned) {
  Params p;
  std::vector<int64_t> maps[4];
  int64_t batch = 0;
  ffi::Error err = Prepare(dfeatures->dimensions(), boxes.dimensions(), bidx.dimensions(), grad.dimensions(), true,
                           spatial_scale, sampling_ratio, aligned, p, maps, batch);
  if (err.failure()) return err;
  float* dfeat = dfeatures->typed_data();
  const int64_t total_rows = batch * p.n * p.h;
  const int64_t row_len = p.w * p.c;
  if (total_rows == 0 || row_len == 0) return ffi::Error::Success();
  const float* grad_data = grad.typed_data();
  const float* box_data = boxes.typed_data();
  const int32_t* bidx_data = bidx.typed_data();
  const int64_t roi_in = p.ph * p.pw * p.c;

  const int threads = static_cast<int>(std::min<int64_t>(MaxThreads(), total_rows));
  RunThreads(threads, [&](int t) {
    const int64_t row_begin = total_rows * t / threads, row_end = total_rows * (t + 1) / threads;
    std::memset(dfeat + row_begin * row_len, 0, (row_end - row_begin) * row_len * sizeof(float));
    RoiTaps taps;
    std::vector<float> scaled(p.c);
    for (int64_t b = 0; b < batch; ++b) {
      if ((b + 1) * p.n * p.h <= row_begin || b * p.n * p.h >= row_end) continue;  // no rows of b here
      for (int64_t r = 0; r < p.rois; ++r) {
        const int64_t img = ClampIndex(bidx_data[maps[2][b] * p.rois + r], p.n);
        const int64_t base = (b * p.n + img) * p.h;  // global row of y = 0
        if (base + p.h <= row_begin || base >= row_end) continue;
        taps.Compute(p, box_data + (maps[1][b] * p.rois + r) * 4);
        const float* g_roi = grad_data + (maps[3][b] * p.rois + r) * roi_in;
        for (int64_t i = 0; i < p.ph; ++i) {
          bool any = false;
          for (const Tap& ty : taps.y[i]) any |= base + ty.index >= row_begin && base + ty.index < row_end;
          if (!any) continue;
          for (int64_t j = 0; j < p.pw; ++j) {
            const float* g = g_roi + (i * p.pw + j) * p.c;
            for (int64_t k = 0; k < p.c; ++k) scaled[k] = taps.Normalise(g[k]);
            for (const Tap& ty : taps.y[i]) {
              const int64_t grow = base + ty.index;
              if (grow < row_begin || grow >= row_end) continue;
              float* row = dfeat + grow * row_len;
              for (const Tap& tx : taps.x[j]) Axpy(row + tx.index * p.c, scaled.data(), ty.weight * tx.weight, p.c);
            }
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error RoiAlignForward(ffi::Buffer<ffi::F32> features, ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::S32> bidx,
                           ffi::ResultBuffer<ffi::F32> out, float spatial_scale, int64_t sampling_ratio,
                           bool aligned) {
  return Guarded("roi_align", [&] {
    return RoiAlignForwardImpl(features, boxes, bidx, out, spatial_scale, sampling_ratio, aligned);
  });
}

ffi::Error RoiAlignBackward(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::S32> bidx,
                            ffi::ResultBuffer<ffi::F32> dfeatures, float spatial_scale, int64_t sampling_ratio,
                            bool aligned) {
  return Guarded("roi_align backward", [&] {
    return RoiAlignBackwardImpl(grad, boxes, bidx, dfeatures, spatial_scale, sampling_ratio, aligned);
  });
}

}  // namespace
}  // namespace jaxseg

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegRoiAlignForward, jaxseg::RoiAlignForward,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // features (..., N, H, W, C)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // boxes (..., R, 4)
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // batch_index (..., R)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()  // out (..., R, PH, PW, C)
                                  .Attr<float>("spatial_scale")
                                  .Attr<int64_t>("sampling_ratio")
                                  .Attr<bool>("aligned"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegRoiAlignBackward, jaxseg::RoiAlignBackward,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // grad of out (..., R, PH, PW, C)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // boxes (..., R, 4)
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()  // batch_index (..., R)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()  // d features (..., N, H, W, C)
                                  .Attr<float>("spatial_scale")
                                  .Attr<int64_t>("sampling_ratio")
                                  .Attr<bool>("aligned"));
