// Pasting of M x M mask probabilities into H x W images at boxes (detectron2 paste_masks_in_image).
//
// Semantics are those of jaxseg/kernels/paste_masks.py ("xla"): pixel centre p + 0.5 maps to
// g = (p + 0.5 - lo) / (hi - lo) * 2 - 1 and to the mask position u = ((g + 1) * M - 1) / 2 (per
// axis, float32); taps floor(u) and floor(u) + 1 with weights 1 - frac and frac, taps outside [0, M)
// read 0 (grid_sample, align_corners=False, zero padding); non-finite u (degenerate boxes) reads
// nothing. The weights separate by axis: each output row first blends two mask rows, then each
// pixel blends two entries of that blended row. Output is the value (float32) or value >= threshold.
//
// Work items are (mask, block of output rows), dynamically scheduled over the threads.
#include <cmath>
#include <cstring>

#include "common.h"

namespace jaxseg {
namespace {

// The two taps of one output pixel along one axis: mask index k0 (weight w0) and k0 + 1 (w1);
// a weight is 0 where its tap is outside the mask.
struct AxisTap {
  int64_t k0;
  float w0, w1;
};

void AxisTaps(float lo, float hi, int64_t m, int64_t size, std::vector<AxisTap>& taps) {
  taps.resize(size);
  const float extent = hi - lo;
  const float m_f = static_cast<float>(m);
  for (int64_t p = 0; p < size; ++p) {
    const float centre = static_cast<float>(p) + 0.5f;
    const float g = (centre - lo) / extent * 2.0f - 1.0f;
    float u = ((g + 1.0f) * m_f - 1.0f) / 2.0f;
    if (!std::isfinite(u)) {
      taps[p] = {-2, 0.0f, 0.0f};
      continue;
    }
    u = std::min(std::max(u, -2.0f), m_f + 1.0f);  // outside the mask either way; keeps the int in range
    const float u0 = std::floor(u);
    const float frac = u - u0;
    const int64_t k0 = static_cast<int64_t>(u0);
    taps[p] = {k0, (k0 >= 0 && k0 < m) ? 1.0f - frac : 0.0f, (k0 + 1 >= 0 && k0 + 1 < m) ? frac : 0.0f};
  }
}

constexpr int64_t kRowBlock = 32;

template <typename Out>
ffi::Error PasteImpl(ffi::Buffer<ffi::F32> masks, ffi::Buffer<ffi::F32> boxes, Out* out,
                     ffi::Span<const int64_t> out_dims, float threshold) {
  const auto md = masks.dimensions(), bd = boxes.dimensions();
  if (out_dims.size() < 3 || md.size() != out_dims.size() || bd.size() != out_dims.size() - 1) {
    return ffi::Error::InvalidArgument("paste_masks: operands have inconsistent ranks");
  }
  const size_t lead = out_dims.size() - 3;
  const int64_t n = out_dims[lead], h = out_dims[lead + 1], w = out_dims[lead + 2];
  const int64_t m = md[lead + 1];
  if (md[lead] != n || md[lead + 2] != m || bd[lead] != n || bd[lead + 1] != 4) {
    return ffi::Error::InvalidArgument("paste_masks: inconsistent operand shapes");
  }
  const std::vector<int64_t> out_lead = Lead(out_dims, lead);
  std::vector<int64_t> mask_map, box_map;
  std::string error;
  if (!BatchMap(out_lead, md, lead, mask_map, error) || !BatchMap(out_lead, bd, lead, box_map, error)) {
    return ffi::Error::InvalidArgument("paste_masks: " + error);
  }
  const int64_t batch = static_cast<int64_t>(mask_map.size());
  const int64_t blocks = (h + kRowBlock - 1) / kRowBlock;
  const float* mask_data = masks.typed_data();
  const float* box_data = boxes.typed_data();

  ParallelFor(batch * n * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<AxisTap> ty, tx;
    std::vector<float> blended(m);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks, i = (item / blocks) % n, b = item / blocks / n;
      const float* mask = mask_data + (mask_map[b] * n + i) * m * m;
      const float* box = box_data + (box_map[b] * n + i) * 4;
      AxisTaps(box[0], box[2], m, w, tx);
      AxisTaps(box[1], box[3], m, h, ty);
      // Columns [x_begin, x_end) are the only ones with a non-zero tap (taps are monotone in x).
      int64_t x_begin = 0, x_end = w;
      while (x_begin < w && tx[x_begin].w0 == 0.0f && tx[x_begin].w1 == 0.0f) ++x_begin;
      while (x_end > x_begin && tx[x_end - 1].w0 == 0.0f && tx[x_end - 1].w1 == 0.0f) --x_end;
      const int64_t y_begin = block * kRowBlock, y_end = std::min(h, y_begin + kRowBlock);
      for (int64_t y = y_begin; y < y_end; ++y) {
        Out* dst = out + ((b * n + i) * h + y) * w;
        const AxisTap& t = ty[y];
        if ((t.w0 == 0.0f && t.w1 == 0.0f) || x_begin == x_end) {
          std::memset(dst, 0, w * sizeof(Out));
          continue;
        }
        // blended[l] = w0 * mask[k0, l] + w1 * mask[k0 + 1, l]  (Wy @ mask, one row); a zero weight
        // marks a row outside the mask, which is not read.
        if (t.w0 != 0.0f && t.w1 != 0.0f) {
          const float *r0 = mask + t.k0 * m, *r1 = r0 + m;
          for (int64_t l = 0; l < m; ++l) blended[l] = t.w0 * r0[l] + t.w1 * r1[l];
        } else if (t.w0 != 0.0f) {
          const float* r0 = mask + t.k0 * m;
          for (int64_t l = 0; l < m; ++l) blended[l] = t.w0 * r0[l];
        } else {
          const float* r1 = mask + (t.k0 + 1) * m;
          for (int64_t l = 0; l < m; ++l) blended[l] = t.w1 * r1[l];
        }
        std::memset(dst, 0, x_begin * sizeof(Out));
        std::memset(dst + x_end, 0, (w - x_end) * sizeof(Out));
        for (int64_t x = x_begin; x < x_end; ++x) {
          const AxisTap& s = tx[x];
          float v = 0.0f;
          if (s.w0 != 0.0f) v = blended[s.k0] * s.w0;
          if (s.w1 != 0.0f) v = v + blended[s.k0 + 1] * s.w1;
          if constexpr (std::is_same_v<Out, bool>) {
            dst[x] = v >= threshold;
          } else {
            dst[x] = v;
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error PasteValues(ffi::Buffer<ffi::F32> masks, ffi::Buffer<ffi::F32> boxes, ffi::ResultBuffer<ffi::F32> out) {
  return Guarded("paste_masks", [&] { return PasteImpl<float>(masks, boxes, out->typed_data(), out->dimensions(), 0.0f); });
}

ffi::Error PasteBinary(ffi::Buffer<ffi::F32> masks, ffi::Buffer<ffi::F32> boxes, ffi::ResultBuffer<ffi::PRED> out,
                       float threshold) {
  return Guarded("paste_masks",
                 [&] { return PasteImpl<bool>(masks, boxes, out->typed_data(), out->dimensions(), threshold); });
}

}  // namespace
}  // namespace jaxseg

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegPasteMasksValues, jaxseg::PasteValues,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // masks (..., N, M, M)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // boxes (..., N, 4)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // values (..., N, H, W)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegPasteMasksBinary, jaxseg::PasteBinary,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()    // masks (..., N, M, M)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()    // boxes (..., N, 4)
                                  .Ret<xla::ffi::Buffer<xla::ffi::PRED>>()   // value >= threshold (..., N, H, W)
                                  .Attr<float>("threshold"));
