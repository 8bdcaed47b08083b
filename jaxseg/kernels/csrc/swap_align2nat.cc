// TensorMask's SwapAlign2Nat, forward and backward, on NHWC float32 maps.
//
// Semantics are those of jaxseg/kernels/swap_align2nat.py ("xla"), i.e. of upstream's CUDA kernel:
// input (N, H, W, S*S) with channel v*S + u, output (N, ceil(H/L), ceil(W/L), M*M) with M = L*S and
// channel v*M + u. Output (y, x, v, u) blends 16 corners of four coordinates
//   oy = y*L + v - M/2 + 0.5, ox = x*L + u - M/2 + 0.5, ov = (v + 0.5)/L - 0.5, ou = (u + 0.5)/L - 0.5,
// each floor / ceil with weights 1 - frac / frac, summed as ((wy*wx)*wv)*wu * G in the kernel's order
// (y corner outermost, then x, v, u); G is pad_val outside the map or the S x S window.
//
// The geometry here is computed on its own (float arithmetic as the CUDA kernel does), not taken from
// the Python side. A corner's input index separates into a (y, v) part and an (x, u) part, so each
// call builds two small corner tables, one per axis pair, and one routine, TapGather, computes
//   dst[n, p, q, a, b] = sum over terms of ((wy*wx)*wv)*wu * src[n][row(p, a) + col(q, b)].
// The forward runs it with the forward tables. The backward runs it with the transposed tables: each
// corner maps outputs to inputs one-to-one, so the gradient of an input element is a gather of at most
// one output per term, summed in the same term order as the "xla" scatter-adds; no atomics, no races,
// and the result does not depend on the thread count. Work items are (image, destination row). With L a
// power of two (TensorMask) every weight product is exact in any order, which GatherRowExact16 uses.
#include <cmath>
#include <cstring>

#include "common.h"

namespace jaxseg {
namespace {

// One corner of an axis pair for one destination (position, mask index): the source offset of its
// part of the flat index (-1: outside, the corner reads the pad value) and its two weights.
struct Corner {
  int32_t offset;
  float w_sp, w_mask;
};

// The four corners (k = 2 * k_spatial + k_mask) of every destination (p, m) of one axis pair.
struct AxisPair {
  int64_t positions = 0, masks = 0;
  std::vector<Corner> corners;  // (positions, masks, 4)

  void Resize(int64_t p, int64_t m) {
    positions = p, masks = m;
    corners.assign(static_cast<size_t>(p * m * 4), Corner{-1, 0.0f, 0.0f});
  }
  Corner* At(int64_t p, int64_t m) { return &corners[static_cast<size_t>((p * masks + m) * 4)]; }
  const Corner* At(int64_t p, int64_t m) const { return &corners[static_cast<size_t>((p * masks + m) * 4)]; }
};

// Raw forward geometry of one axis pair: input spatial and mask index of each corner (valid or not).
struct RawCorner {
  int64_t sp, mask;
  float w_sp, w_mask;
};

struct Geometry {
  int64_t lambda_val, s, in_size, out_size, m_out;
  std::vector<RawCorner> corners;  // (out_size, m_out, 4)

  const RawCorner* At(int64_t p, int64_t m) const { return &corners[static_cast<size_t>((p * m_out + m) * 4)]; }
  bool Inside(const RawCorner& c) const { return c.sp >= 0 && c.sp < in_size && c.mask >= 0 && c.mask < s; }
};

// The corners as the CUDA kernel computes them: float coordinates, floor / ceil, float weights.
Geometry MakeGeometry(int64_t lambda_val, int64_t s, int64_t in_size) {
  Geometry g{lambda_val, s, in_size, (in_size + lambda_val - 1) / lambda_val, lambda_val * s, {}};
  g.corners.resize(static_cast<size_t>(g.out_size * g.m_out * 4));
  const float lambda = static_cast<float>(lambda_val);
  const float half = static_cast<int>(g.m_out) / 2.;
  for (int64_t m = 0; m < g.m_out; ++m) {
    const int mi = static_cast<int>(m);
    const float om = (mi + 0.5) / lambda - 0.5;
    const int64_t mf = static_cast<int64_t>(std::floor(om)), mc = static_cast<int64_t>(std::ceil(om));
    const float mwc = om - static_cast<float>(mf);
    const float mwf = 1. - mwc;
    for (int64_t p = 0; p < g.out_size; ++p) {
      const int pi = static_cast<int>(p);
      const float op = pi * lambda + mi - half + 0.5;
      const int64_t pf = static_cast<int64_t>(std::floor(op)), pc = static_cast<int64_t>(std::ceil(op));
      const float pwc = op - static_cast<float>(pf);
      const float pwf = 1. - pwc;
      RawCorner* c = &g.corners[static_cast<size_t>((p * g.m_out + m) * 4)];
      c[0] = {pf, mf, pwf, mwf};
      c[1] = {pf, mc, pwf, mwc};
      c[2] = {pc, mf, pwc, mwf};
      c[3] = {pc, mc, pwc, mwc};
    }
  }
  return g;
}

// Forward tables: destination (output position p, window index m), source offset sp*sp_stride +
// mask*mask_stride in the input image.
AxisPair ForwardPair(const Geometry& g, int64_t sp_stride, int64_t mask_stride) {
  AxisPair pair;
  pair.Resize(g.out_size, g.m_out);
  for (int64_t p = 0; p < g.out_size; ++p) {
    for (int64_t m = 0; m < g.m_out; ++m) {
      const RawCorner* rc = g.At(p, m);
      Corner* c = pair.At(p, m);
      for (int k = 0; k < 4; ++k) {
        const int32_t off = g.Inside(rc[k]) ? static_cast<int32_t>(rc[k].sp * sp_stride + rc[k].mask * mask_stride) : -1;
        c[k] = {off, rc[k].w_sp, rc[k].w_mask};
      }
    }
  }
  return pair;
}

// Backward tables: destination (input position, input mask index), source offset p*sp_stride +
// m*mask_stride in the output gradient. False if two outputs share a corner (cannot happen).
bool InversePair(const Geometry& g, int64_t sp_stride, int64_t mask_stride, AxisPair& pair) {
  pair.Resize(g.in_size, g.s);
  for (int64_t p = 0; p < g.out_size; ++p) {
    for (int64_t m = 0; m < g.m_out; ++m) {
      const RawCorner* rc = g.At(p, m);
      for (int k = 0; k < 4; ++k) {
        if (!g.Inside(rc[k])) continue;
        Corner& c = pair.At(rc[k].sp, rc[k].mask)[k];
        if (c.offset >= 0) return false;
        c = {static_cast<int32_t>(p * sp_stride + m * mask_stride), rc[k].w_sp, rc[k].w_mask};
      }
    }
  }
  return true;
}

// The terms (row corner, column corner) in the kernel's order (ky, kx, kv, ku), keeping only those
// whose weight is nonzero somewhere: the others add exact zeros (with L = 1 only 1 or 4 remain).
struct Terms {
  int count = 0;
  int row[16], col[16];
};

Terms LiveTerms(const Geometry& gy, const Geometry& gx) {
  bool row_live[4] = {}, col_live[4] = {};
  for (const Geometry* g : {&gy, &gx}) {
    bool* live = g == &gy ? row_live : col_live;
    for (size_t i = 0; i < g->corners.size(); ++i) {
      const RawCorner& c = g->corners[i];
      if (c.w_sp != 0.0f && c.w_mask != 0.0f) live[i % 4] = true;
    }
  }
  Terms t;
  for (int ky = 0; ky < 2; ++ky)
    for (int kx = 0; kx < 2; ++kx)
      for (int kv = 0; kv < 2; ++kv)
        for (int ku = 0; ku < 2; ++ku) {
          const int r = 2 * ky + kv, c = 2 * kx + ku;
          if (row_live[r] && col_live[c]) t.row[t.count] = r, t.col[t.count] = c, ++t.count;
        }
  return t;
}

// One destination row-pair (p, a) against every (q, b): dst[(q * A + a) * B + b] for all q, b.
// `src` is the source image; a corner outside reads `pad`. kFixedTerms > 0: that many terms (unrolled).
template <int kFixedTerms>
inline __attribute__((always_inline)) void GatherRowBody(const float* src, const Corner* rc, const AxisPair& cols,
                                                         const Terms& terms, float pad, int64_t a, int64_t a_count,
                                                         float* dst) {
  const int n_terms = kFixedTerms > 0 ? kFixedTerms : terms.count;
  const int64_t q_count = cols.positions, b_count = cols.masks;
  for (int64_t q = 0; q < q_count; ++q) {
    const Corner* cq = cols.At(q, 0);
    float* out = dst + (q * a_count + a) * b_count;
    for (int64_t b = 0; b < b_count; ++b) {
      const Corner* cc = cq + 4 * b;
      float acc = 0.0f;
      for (int i = 0; i < n_terms; ++i) {
        const Corner& r = rc[terms.row[i]];
        const Corner& c = cc[terms.col[i]];
        const float w = ((r.w_sp * c.w_sp) * r.w_mask) * c.w_mask;
        const float g = (r.offset >= 0 && c.offset >= 0) ? src[r.offset + c.offset] : pad;
        const float term = w * g;
        acc = i == 0 ? term : acc + term;
      }
      out[b] = acc;
    }
  }
}

// The hot loop, compiled per instruction set (see common.h), for 16 terms, 1 term and any number.
#define JAXSEG_GATHER_ROW(NAME, TERMS)                                                                       \
  JAXSEG_MULTIVERSION void NAME(const float* src, const Corner* rc, const AxisPair& cols, const Terms& terms, \
                                float pad, int64_t a, int64_t a_count, float* dst) {                         \
    GatherRowBody<TERMS>(src, rc, cols, terms, pad, a, a_count, dst);                                        \
  }
JAXSEG_GATHER_ROW(GatherRow16, 16)
JAXSEG_GATHER_ROW(GatherRow1, 1)
JAXSEG_GATHER_ROW(GatherRowAny, 0)
#undef JAXSEG_GATHER_ROW

// The 16-term loop when every weight is a dyadic fraction of few bits (L a power of two, as in TensorMask):
// then ((wy*wx)*wv)*wu == (wy*wv)*(wx*wu) exactly, so each table entry carries its product and each term
// costs one multiply for the weight. Corners outside read a safe address and are replaced by the pad
// value with a select, so the loop has no branches. Same values, bit for bit, as GatherRowBody.
struct PackedCol {
  int32_t off[4];  // 0 where outside (a safe read; the select discards it)
  float w[4];      // w_sp * w_mask
  uint32_t valid;  // bit k: corner k inside
};

std::vector<PackedCol> PackCols(const AxisPair& cols) {
  std::vector<PackedCol> packed(static_cast<size_t>(cols.positions * cols.masks));
  for (size_t i = 0; i < packed.size(); ++i) {
    const Corner* c = &cols.corners[4 * i];
    PackedCol& pc = packed[i];
    pc.valid = 0;
    for (int k = 0; k < 4; ++k) {
      pc.off[k] = c[k].offset >= 0 ? c[k].offset : 0;
      pc.w[k] = c[k].w_sp * c[k].w_mask;
      pc.valid |= static_cast<uint32_t>(c[k].offset >= 0) << k;
    }
  }
  return packed;
}

JAXSEG_MULTIVERSION void GatherRowExact16(const float* src, const Corner* rc, const PackedCol* cols, int64_t q_count,
                                          int64_t b_count, float pad, int64_t a, int64_t a_count, float* dst) {
  const float* base[4];
  float wr[4];
  bool rvalid[4];
  for (int k = 0; k < 4; ++k) {
    rvalid[k] = rc[k].offset >= 0;
    base[k] = src + (rvalid[k] ? rc[k].offset : 0);
    wr[k] = rc[k].w_sp * rc[k].w_mask;
  }
  for (int64_t q = 0; q < q_count; ++q) {
    const PackedCol* cq = cols + q * b_count;
    float* out = dst + (q * a_count + a) * b_count;
    for (int64_t b = 0; b < b_count; ++b) {
      const PackedCol& c = cq[b];
      float acc = 0.0f;
      bool first = true;
      for (int ky = 0; ky < 2; ++ky)
        for (int kx = 0; kx < 2; ++kx)
          for (int kv = 0; kv < 2; ++kv)
            for (int ku = 0; ku < 2; ++ku) {
              const int r = 2 * ky + kv, k = 2 * kx + ku;
              const float v = base[r][c.off[k]];
              const float g = (rvalid[r] && ((c.valid >> k) & 1u)) ? v : pad;
              const float term = (wr[r] * c.w[k]) * g;
              acc = first ? term : acc + term;
              first = false;
            }
      out[b] = acc;
    }
  }
}

// dst (images, P, Q, A*B) from src (images, src_image floats) with the row table over (P, A) and the
// column table over (Q, B).
// `exact`: every weight product is exact in any order (GatherRowExact16 may be used).
void TapGather(const float* src, int64_t src_image, float* dst, int64_t images, const AxisPair& rows,
               const AxisPair& cols, const Terms& terms, float pad, bool exact) {
  const int64_t p_count = rows.positions, a_count = rows.masks;
  const int64_t dst_row = cols.positions * a_count * cols.masks;  // one destination row p
  const bool fast = exact && terms.count == 16;
  const std::vector<PackedCol> packed = fast ? PackCols(cols) : std::vector<PackedCol>();
  ParallelFor(images * p_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / p_count, p = item % p_count;
      const float* img = src + n * src_image;
      float* out = dst + item * dst_row;
      for (int64_t a = 0; a < a_count; ++a) {
        const Corner* rc = rows.At(p, a);
        if (fast) {
          GatherRowExact16(img, rc, packed.data(), cols.positions, cols.masks, pad, a, a_count, out);
        } else if (terms.count == 16) {
          GatherRow16(img, rc, cols, terms, pad, a, a_count, out);
        } else if (terms.count == 1) {
          GatherRow1(img, rc, cols, terms, pad, a, a_count, out);
        } else {
          GatherRowAny(img, rc, cols, terms, pad, a, a_count, out);
        }
      }
    }
  });
}

// With L = 2^k every coordinate is a multiple of 1 / (2L) and every weight has at most k + 1 significant
// bits, so products of four weights are exact in float32, in any order.
bool PowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0 && v <= 1024; }

// Shapes of one call: images (all leading dims), input map (h, w, s), output map (ho, wo, m).
struct Shapes {
  int64_t images, h, w, s, ho, wo, m;
};

ffi::Error MakeShapes(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out, int64_t lambda_val, Shapes& sh) {
  if (in.size() < 4 || in.size() != out.size()) {
    return ffi::Error::InvalidArgument("swap_align2nat: operands must be (..., N, H, W, C) of one rank");
  }
  if (lambda_val < 1) return ffi::Error::InvalidArgument("swap_align2nat: lambda_val must be >= 1");
  const size_t r = in.size();
  sh.images = Prod(in, r - 3);
  if (Prod(out, r - 3) != sh.images) return ffi::Error::InvalidArgument("swap_align2nat: batch dims differ");
  sh.h = in[r - 3], sh.w = in[r - 2];
  const int64_t c = in[r - 1];
  sh.s = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(c))));
  if (sh.s * sh.s != c || sh.s == 0) return ffi::Error::InvalidArgument("swap_align2nat: channels must be S*S");
  sh.m = lambda_val * sh.s;
  sh.ho = (sh.h + lambda_val - 1) / lambda_val, sh.wo = (sh.w + lambda_val - 1) / lambda_val;
  if (out[r - 3] != sh.ho || out[r - 2] != sh.wo || out[r - 1] != sh.m * sh.m) {
    return ffi::Error::InvalidArgument("swap_align2nat: output shape does not match the input and lambda");
  }
  if (sh.h * sh.w * c >= (int64_t{1} << 31) || sh.ho * sh.wo * sh.m * sh.m >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("swap_align2nat: one image must have fewer than 2**31 elements");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t lambda_val, float pad_val) {
  Shapes sh;
  ffi::Error err = MakeShapes(x.dimensions(), y->dimensions(), lambda_val, sh);
  if (err.failure()) return err;
  if (y->element_count() == 0) return ffi::Error::Success();
  const Geometry gy = MakeGeometry(lambda_val, sh.s, sh.h), gx = MakeGeometry(lambda_val, sh.s, sh.w);
  const int64_t c = sh.s * sh.s;
  const AxisPair rows = ForwardPair(gy, sh.w * c, sh.s), cols = ForwardPair(gx, c, 1);
  TapGather(x.typed_data(), sh.h * sh.w * c, y->typed_data(), sh.images, rows, cols, LiveTerms(gy, gx), pad_val,
            PowerOfTwo(lambda_val));
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> gy_buf, ffi::ResultBuffer<ffi::F32> gx_buf, int64_t lambda_val) {
  Shapes sh;
  ffi::Error err = MakeShapes(gx_buf->dimensions(), gy_buf.dimensions(), lambda_val, sh);
  if (err.failure()) return err;
  float* gx_data = gx_buf->typed_data();
  if (gy_buf.element_count() == 0) {
    std::memset(gx_data, 0, gx_buf->element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  if (gx_buf->element_count() == 0) return ffi::Error::Success();
  const Geometry gy = MakeGeometry(lambda_val, sh.s, sh.h), gx = MakeGeometry(lambda_val, sh.s, sh.w);
  const int64_t mm = sh.m * sh.m;
  AxisPair rows, cols;
  if (!InversePair(gy, sh.wo * mm, sh.m, rows) || !InversePair(gx, mm, 1, cols)) {
    return ffi::Error::Internal("swap_align2nat backward: two outputs share a corner");
  }
  TapGather(gy_buf.typed_data(), sh.ho * sh.wo * mm, gx_data, sh.images, rows, cols, LiveTerms(gy, gx), 0.0f,
            PowerOfTwo(lambda_val));
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t lambda_val, float pad_val) {
  return Guarded("swap_align2nat", [&] { return ForwardImpl(x, y, lambda_val, pad_val); });
}

ffi::Error Backward(ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx, int64_t lambda_val) {
  return Guarded("swap_align2nat backward", [&] { return BackwardImpl(g, dx, lambda_val); });
}

}  // namespace
}  // namespace jaxseg

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegSwapAlign2NatForward, jaxseg::Forward,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // x (..., H, W, S*S)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()  // y (..., H', W', (L*S)^2)
                                  .Attr<int64_t>("lambda_val")
                                  .Attr<float>("pad_val"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegSwapAlign2NatBackward, jaxseg::Backward,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // grad of y (..., H', W', (L*S)^2)
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()  // grad of x (..., H, W, S*S)
                                  .Attr<int64_t>("lambda_val"));
