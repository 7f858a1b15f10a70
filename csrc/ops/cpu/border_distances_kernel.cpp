// CPU kernel of border_distances: for every pixel, the Euclidean distances to the nearest and the
// second-nearest distinct instance (cell) of an instance map, as the U-Net border weight map needs.
//
// Exact within a cutoff: each instance contributes a squared Euclidean distance transform computed
// only inside its bounding box grown by the cutoff radius (Felzenszwalb & Huttenlocher's separable
// lower-envelope algorithm; the instance's nearest pixel to any point of that window lies in its
// bounding box, so the window transform is exact), and every pixel keeps the two smallest values.
// A distance beyond the cutoff is reported as +inf. Parallel over the images of a batch.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

namespace unet_fast {
namespace {

constexpr int64_t kFar = std::numeric_limits<int64_t>::max() / 4;  // "no instance pixel": no overflow when added to

struct Box {
  int64_t id, top, left, bottom, right;  // inclusive bounds
};

template <typename T>
std::vector<Box> instance_boxes(const T* ids, int64_t height, int64_t width) {
  std::vector<Box> boxes;
  std::unordered_map<int64_t, size_t> index_of;
  for (int64_t r = 0; r < height; ++r) {
    const T* row = ids + r * width;
    int64_t c = 0;
    while (c < width) {
      const int64_t id = static_cast<int64_t>(row[c]);
      int64_t end = c + 1;  // a run of equal ids needs one lookup
      while (end < width && static_cast<int64_t>(row[end]) == id) ++end;
      if (id != 0) {
        auto [it, inserted] = index_of.try_emplace(id, boxes.size());
        if (inserted) {
          boxes.push_back({id, r, c, r, end - 1});
        } else {
          Box& b = boxes[it->second];
          b.bottom = r;
          b.left = std::min(b.left, c);
          b.right = std::max(b.right, end - 1);
        }
      }
      c = end;
    }
  }
  return boxes;
}

// Lower envelope of the parabolas (q - rows[k])^2 + values[k]: out[q] for q in [0, length).
// rows are increasing; values finite; count >= 1. v/z are scratch buffers of size >= count and count + 1.
void lower_envelope(const int64_t* rows, const int64_t* values, int64_t count, int64_t length, int64_t* out,
                    std::vector<int64_t>& v, std::vector<double>& z) {
  int64_t k = 0;
  v[0] = 0;
  z[0] = -std::numeric_limits<double>::infinity();
  z[1] = std::numeric_limits<double>::infinity();
  for (int64_t i = 1; i < count; ++i) {
    double s;
    while (true) {  // z[0] = -inf ends the loop at k = 0
      const int64_t a = rows[i], b = rows[v[k]];
      s = (static_cast<double>(values[i] + a * a) - static_cast<double>(values[v[k]] + b * b)) /
          (2.0 * static_cast<double>(a - b));
      if (s > z[k]) break;
      --k;
    }
    ++k;
    v[k] = i;
    z[k] = s;
    z[k + 1] = std::numeric_limits<double>::infinity();
  }
  k = 0;
  for (int64_t q = 0; q < length; ++q) {
    while (z[k + 1] < static_cast<double>(q)) ++k;
    const int64_t d = q - rows[v[k]];
    out[q] = d * d + values[v[k]];
  }
}

template <typename T>
void two_nearest_one_image(const T* ids, int64_t height, int64_t width, int64_t radius, int64_t limit,
                           float* d1_out, float* d2_out) {
  const int64_t pixels = height * width;
  std::vector<int64_t> best1(pixels, kFar), best2(pixels, kFar);
  const std::vector<Box> boxes = instance_boxes(ids, height, width);

  std::vector<int64_t> row_dist, col_rows, col_values, col_out, v;
  std::vector<double> z;
  for (const Box& b : boxes) {
    const int64_t top = std::max<int64_t>(0, b.top - radius), bottom = std::min(height - 1, b.bottom + radius);
    const int64_t left = std::max<int64_t>(0, b.left - radius), right = std::min(width - 1, b.right + radius);
    const int64_t win_h = bottom - top + 1, win_w = right - left + 1, box_h = b.bottom - b.top + 1;
    // Pass 1: along each row of the box, the squared horizontal distance to the instance.
    row_dist.assign(box_h * win_w, kFar);
    for (int64_t r = 0; r < box_h; ++r) {
      const T* src = ids + (b.top + r) * width + left;
      int64_t* dst = row_dist.data() + r * win_w;
      int64_t last = -1;
      for (int64_t c = 0; c < win_w; ++c) {
        if (static_cast<int64_t>(src[c]) == b.id) last = c;
        if (last >= 0) dst[c] = c - last;
      }
      last = -1;
      for (int64_t c = win_w - 1; c >= 0; --c) {
        if (static_cast<int64_t>(src[c]) == b.id) last = c;
        if (last >= 0) dst[c] = std::min(dst[c], last - c);
      }
      for (int64_t c = 0; c < win_w; ++c)
        if (dst[c] != kFar) dst[c] *= dst[c];
    }
    // Pass 2: down each column of the window, the lower envelope over the box rows that reach it.
    col_rows.resize(box_h);
    col_values.resize(box_h);
    col_out.resize(win_h);
    v.resize(box_h);
    z.resize(box_h + 1);
    for (int64_t c = 0; c < win_w; ++c) {
      int64_t count = 0;
      for (int64_t r = 0; r < box_h; ++r) {
        const int64_t value = row_dist[r * win_w + c];
        if (value == kFar) continue;
        col_rows[count] = b.top - top + r;
        col_values[count] = value;
        ++count;
      }
      if (count == 0) continue;
      lower_envelope(col_rows.data(), col_values.data(), count, win_h, col_out.data(), v, z);
      for (int64_t r = 0; r < win_h; ++r) {
        const int64_t d = col_out[r];
        if (d > limit) continue;
        const int64_t p = (top + r) * width + left + c;
        if (d < best1[p]) {
          best2[p] = best1[p];
          best1[p] = d;
        } else if (d < best2[p]) {
          best2[p] = d;
        }
      }
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < pixels; ++p) {
    d1_out[p] = best1[p] <= limit ? std::sqrt(static_cast<float>(best1[p])) : inf;
    d2_out[p] = best2[p] <= limit ? std::sqrt(static_cast<float>(best2[p])) : inf;
  }
}

std::tuple<at::Tensor, at::Tensor> border_distances_cpu(const at::Tensor& instances, double max_distance) {
  TORCH_CHECK(instances.dim() == 3, "border_distances: instances must be 3-d (N, H, W)");
  TORCH_CHECK(instances.scalar_type() == at::kLong || instances.scalar_type() == at::kInt,
              "border_distances: instances must be int32 or int64");
  TORCH_CHECK(max_distance >= 0 && std::isfinite(max_distance), "border_distances: max_distance must be finite and >= 0");
  const at::Tensor ids = instances.contiguous();
  const int64_t n = ids.size(0), h = ids.size(1), w = ids.size(2);
  at::Tensor d1 = at::empty({n, h, w}, ids.options().dtype(at::kFloat));
  at::Tensor d2 = at::empty({n, h, w}, ids.options().dtype(at::kFloat));
  if (d1.numel() == 0) return {d1, d2};
  // Squared distances are integers: one is within max_distance exactly when it is <= floor(max^2);
  // no pixel farther than floor(max_distance) along either axis can be.
  const int64_t radius = static_cast<int64_t>(std::floor(max_distance));
  const int64_t limit = static_cast<int64_t>(std::floor(max_distance * max_distance));
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "border_distances_cpu", [&] {
    const index_t* src = ids.const_data_ptr<index_t>();
    float* out1 = d1.mutable_data_ptr<float>();
    float* out2 = d2.mutable_data_ptr<float>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        two_nearest_one_image(src + i * h * w, h, w, radius, limit, out1 + i * h * w, out2 + i * h * w);
    });
  });
  return {d1, d2};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("border_distances", &border_distances_cpu);
}

}  // namespace unet_fast
