// Greedy non-maximum suppression (nms and batched_nms) with fixed-size, padded output.
//
// Semantics are those of jaxseg/kernels/nms.py ("xla"), i.e. torchvision's predicate: a kept box a
// suppresses a later box b iff inter / (area_a + area_b - inter) > threshold (strict, NaN never
// suppresses), with area = (x2 - x1) * (y2 - y1); boxes are visited valid-only, by descending score
// (NaN scores last), ties by lower index. batched_nms adds "a and b have the same group", computed
// exactly per group (no coordinate offsets). Invalid boxes are never kept and never suppress. The
// output holds the first K kept indices in visiting order, padded with 0, and a validity mask.
//
// Each candidate is compared with the boxes kept so far. For threshold >= 0 a box can only be
// suppressed by one it overlaps with positive width and height, and a box with a non-finite
// coordinate or no positive extent can neither suppress nor be suppressed (its IoU is 0 or NaN), so
// the kept boxes are bucketed on a grid by centre and a candidate only looks at the cells whose
// boxes may overlap it. A negative or NaN threshold compares with every kept box. Either way the
// final test is the exact predicate, run in blocks that the compiler vectorises. Batch elements
// (vmap, e.g. one NMS per class) run in parallel.
#include <algorithm>
#include <cmath>

#include "common.h"

namespace jaxseg {
namespace {

// Kept boxes of one grid cell, as a structure of arrays, and their bounding extent.
struct Cell {
  std::vector<float> x1, y1, x2, y2, area;
  std::vector<int32_t> group;
  float min_x1 = INFINITY, min_y1 = INFINITY, max_x2 = -INFINITY, max_y2 = -INFINITY;

  void Add(const float* b, float a, int32_t g) {
    x1.push_back(b[0]), y1.push_back(b[1]), x2.push_back(b[2]), y2.push_back(b[3]), area.push_back(a);
    group.push_back(g);
    min_x1 = std::min(min_x1, b[0]), min_y1 = std::min(min_y1, b[1]);
    max_x2 = std::max(max_x2, b[2]), max_y2 = std::max(max_y2, b[3]);
  }
};

// True iff some box of `c` (same group) suppresses box `b` of area `a`: the exact predicate.
JAXSEG_MULTIVERSION bool CellSuppresses(const Cell& c, const float* b, float a, int32_t g, float threshold) {
  constexpr size_t kBlock = 32;
  const size_t n = c.x1.size();
  const float bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  for (size_t s = 0; s < n; s += kBlock) {
    const size_t e = std::min(n, s + kBlock);
    int hit = 0;
    for (size_t j = s; j < e; ++j) {
      const float iw = std::max(std::min(c.x2[j], bx2) - std::max(c.x1[j], bx1), 0.0f);
      const float ih = std::max(std::min(c.y2[j], by2) - std::max(c.y1[j], by1), 0.0f);
      const float inter = iw * ih;
      hit |= (inter / ((c.area[j] + a) - inter) > threshold) & (c.group[j] == g);
    }
    if (hit) return true;
  }
  return false;
}

inline bool Proper(const float* b) {  // finite, with positive width and height
  return std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]) && b[2] > b[0] &&
         b[3] > b[1];
}

// The boxes kept so far: a gx x gy grid of cells by box centre (1 x 1: compare with everything).
class KeptIndex {
 public:
  // `boxes` of the candidates `order` (only the proper ones matter when `pruned`).
  KeptIndex(const float* boxes, const std::vector<int32_t>& order, bool pruned) : pruned_(pruned) {
    if (!pruned_) {
      cells_.resize(1);
      return;
    }
    double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
    int64_t count = 0;
    for (int32_t i : order) {
      const float* b = boxes + 4 * static_cast<int64_t>(i);
      if (!Proper(b)) continue;
      ++count;
      for (int d = 0; d < 2; ++d) {
        const double c = 0.5 * (static_cast<double>(b[d]) + b[d + 2]);
        lo[d] = std::min(lo[d], c), hi[d] = std::max(hi[d], c);
        half_[d] = std::max(half_[d], 0.5 * (static_cast<double>(b[d + 2]) - b[d]));
      }
    }
    const int g = static_cast<int>(std::clamp(std::sqrt(count / 16.0), 1.0, 64.0));
    for (int d = 0; d < 2; ++d) {
      const double range = hi[d] - lo[d];
      // A single cell when the centres (nearly) coincide, so that the cells stay wide compared with rounding.
      size_[d] = (count == 0 || !(range > 1e-6 * (std::fabs(lo[d]) + std::fabs(hi[d]) + 1.0))) ? 1 : g;
      origin_[d] = count == 0 ? 0.0 : lo[d];
      inv_width_[d] = size_[d] > 1 ? size_[d] / range : 0.0;
    }
    cells_.resize(static_cast<size_t>(size_[0]) * size_[1]);
  }

  bool Suppressed(const float* b, float a, int32_t g, float threshold) const {
    if (!pruned_) return CellSuppresses(cells_[0], b, a, g, threshold);
    if (!Proper(b)) return false;
    int lo[2], hi[2];
    for (int d = 0; d < 2; ++d) {  // cells whose centres may lie in (b.lo - half, b.hi + half), one cell of margin
      lo[d] = CellOf(d, static_cast<double>(b[d]) - half_[d]) - 1;
      hi[d] = CellOf(d, static_cast<double>(b[d + 2]) + half_[d]) + 1;
      lo[d] = std::max(lo[d], 0), hi[d] = std::min(hi[d], size_[d] - 1);
    }
    for (int cy = lo[1]; cy <= hi[1]; ++cy) {
      for (int cx = lo[0]; cx <= hi[0]; ++cx) {
        const Cell& c = cells_[static_cast<size_t>(cy) * size_[0] + cx];
        // Overlap with positive width and height is needed, so the cell's extent must overlap too.
        if (c.x1.empty() || !(c.max_x2 > b[0] && c.min_x1 < b[2] && c.max_y2 > b[1] && c.min_y1 < b[3])) continue;
        if (CellSuppresses(c, b, a, g, threshold)) return true;
      }
    }
    return false;
  }

  void Add(const float* b, float a, int32_t g) {
    if (!pruned_) {
      cells_[0].Add(b, a, g);
    } else if (Proper(b)) {  // others never suppress
      const int cx = std::clamp(CellOf(0, 0.5 * (static_cast<double>(b[0]) + b[2])), 0, size_[0] - 1);
      const int cy = std::clamp(CellOf(1, 0.5 * (static_cast<double>(b[1]) + b[3])), 0, size_[1] - 1);
      cells_[static_cast<size_t>(cy) * size_[0] + cx].Add(b, a, g);
    }
  }

 private:
  int CellOf(int d, double c) const {
    const double f = std::floor((c - origin_[d]) * inv_width_[d]);
    return static_cast<int>(std::clamp(f, -1.0, static_cast<double>(size_[d])));
  }

  bool pruned_;
  int size_[2] = {1, 1};
  double origin_[2] = {0.0, 0.0}, inv_width_[2] = {0.0, 0.0}, half_[2] = {0.0, 0.0};
  std::vector<Cell> cells_;
};

// Candidate in visiting order.
struct Ranked {
  float score;
  int32_t index;
};

// Valid first is handled by only ranking valid boxes; then descending score, NaN last, lower index.
inline bool RanksBefore(const Ranked& a, const Ranked& b) {
  const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a.score != b.score) return a.score > b.score;  // -0.0 == 0.0: a tie
  return a.index < b.index;
}

// One NMS problem: n boxes -> keep (k,), keep_valid (k,). `groups` may be null (one group).
void NmsOne(int64_t n, int64_t k, const float* boxes, const float* scores, const bool* valid, const int32_t* groups,
            float threshold, int32_t* keep, bool* keep_valid) {
  std::vector<Ranked> ranked;
  ranked.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (valid[i]) ranked.push_back({scores[i], static_cast<int32_t>(i)});
  }
  std::sort(ranked.begin(), ranked.end(), RanksBefore);
  std::vector<int32_t> order(ranked.size());
  for (size_t i = 0; i < ranked.size(); ++i) order[i] = ranked[i].index;

  // The grid pays off from a few hundred boxes; it needs threshold >= 0 (false for NaN).
  KeptIndex index(boxes, order, threshold >= 0.0f && order.size() >= 256);
  int64_t kept = 0;
  for (int32_t i : order) {
    if (kept == k) break;
    const float* b = boxes + 4 * static_cast<int64_t>(i);
    const float area = (b[2] - b[0]) * (b[3] - b[1]);
    const int32_t g = groups ? groups[i] : 0;
    if (index.Suppressed(b, area, g, threshold)) continue;
    index.Add(b, area, g);
    keep[kept] = i;
    keep_valid[kept] = true;
    ++kept;
  }
  std::fill(keep + kept, keep + k, 0);
  std::fill(keep_valid + kept, keep_valid + k, false);
}

ffi::Error NmsImpl(ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::PRED> valid,
               ffi::Buffer<ffi::S32> groups, ffi::Buffer<ffi::F32> threshold, ffi::ResultBuffer<ffi::S32> keep,
               ffi::ResultBuffer<ffi::PRED> keep_valid, bool use_groups) {
  const auto kd = keep->dimensions();
  if (kd.size() < 1 || scores.dimensions().size() != kd.size() || boxes.dimensions().size() != kd.size() + 1 ||
      valid.dimensions().size() != kd.size() || groups.dimensions().size() != kd.size() ||
      threshold.dimensions().size() != kd.size() - 1) {
    return ffi::Error::InvalidArgument("nms: operands have inconsistent ranks");
  }
  const size_t lead = kd.size() - 1;
  const int64_t n = scores.dimensions()[lead], k = kd[lead];
  if (boxes.dimensions()[lead] != n || boxes.dimensions()[lead + 1] != 4 || valid.dimensions()[lead] != n ||
      groups.dimensions()[lead] != n) {
    return ffi::Error::InvalidArgument("nms: inconsistent operand shapes");
  }
  const std::vector<int64_t> out_lead = Lead(kd, lead);
  std::vector<int64_t> maps[5];
  const ffi::Span<const int64_t> dims[5] = {boxes.dimensions(), scores.dimensions(), valid.dimensions(),
                                            groups.dimensions(), threshold.dimensions()};
  std::string error;
  for (int j = 0; j < 5; ++j) {
    if (!BatchMap(out_lead, dims[j], lead, maps[j], error)) return ffi::Error::InvalidArgument("nms: " + error);
  }
  const int64_t batch = static_cast<int64_t>(maps[0].size());
  const float* box_data = boxes.typed_data();
  const float* score_data = scores.typed_data();
  const bool* valid_data = valid.typed_data();
  const int32_t* group_data = groups.typed_data();
  const float* thr_data = threshold.typed_data();
  int32_t* keep_data = keep->typed_data();
  bool* keep_valid_data = keep_valid->typed_data();
  ParallelFor(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      NmsOne(n, k, box_data + maps[0][b] * n * 4, score_data + maps[1][b] * n, valid_data + maps[2][b] * n,
             use_groups ? group_data + maps[3][b] * n : nullptr, thr_data[maps[4][b]], keep_data + b * k,
             keep_valid_data + b * k);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Nms(ffi::Buffer<ffi::F32> boxes, ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::PRED> valid,
               ffi::Buffer<ffi::S32> groups, ffi::Buffer<ffi::F32> threshold, ffi::ResultBuffer<ffi::S32> keep,
               ffi::ResultBuffer<ffi::PRED> keep_valid, bool use_groups) {
  return Guarded("nms", [&] { return NmsImpl(boxes, scores, valid, groups, threshold, keep, keep_valid, use_groups); });
}

}  // namespace
}  // namespace jaxseg

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegNms, jaxseg::Nms,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // boxes (..., N, 4)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // scores (..., N)
                                  .Arg<xla::ffi::Buffer<xla::ffi::PRED>>()  // valid (..., N)
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()   // groups (..., N)
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // iou threshold (...)
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()   // keep (..., K)
                                  .Ret<xla::ffi::Buffer<xla::ffi::PRED>>()  // keep_valid (..., K)
                                  .Attr<bool>("use_groups"));
