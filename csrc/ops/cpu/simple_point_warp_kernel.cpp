// CPU kernel of simple_point_warp: the warping step of the warping error (Jain et al. 2010, the
// ISBI 2012 challenge metric). The target cell map is warped toward the prediction by flipping only
// simple pixels, then every pixel still in disagreement is classified by what its flip would do.
//
// Topology: cells (value 1) are 4-connected, boundary (value 0) 8-connected, the complementary
// (4, 8) pair for which the local 3x3 test below is exact in 2-D. Pixels outside the image count as
// boundary and never change. A pixel is simple iff, in its 8-neighbourhood, the cell pixels form
// exactly one 4-connected component 4-adjacent to it and the boundary pixels exactly one
// 8-connected component.
//
// Order: a FIFO queue holding every disagreeing pixel in raster order; a pixel that flips queues
// its disagreeing neighbours again (their simplicity may have changed). Each flip removes one
// disagreement, so the loop ends, and every pixel left was tested after its last neighbour change.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

namespace unet_fast {
namespace {

// The 8-neighbourhood clockwise from the upper left; odd positions are the 4-neighbours.
constexpr int kRingDy[8] = {-1, -1, -1, 0, 1, 1, 1, 0};
constexpr int kRingDx[8] = {-1, 0, 1, 1, 1, 0, -1, -1};

// Codes of the classes output: what flipping a disagreeing pixel of the warped target would do.
enum MismatchClass : uint8_t {
  kAgree = 0,
  kSplit = 1,         // cell -> boundary separates a cell
  kMerge = 2,         // boundary -> cell joins cells
  kCellAddition = 3,  // boundary -> cell creates a cell
  kCellDeletion = 4,  // cell -> boundary deletes a one-pixel cell
  kHoleAddition = 5,  // cell -> boundary creates a boundary island inside a cell
  kHoleDeletion = 6,  // boundary -> cell removes a boundary island
};

struct RingCounts {
  uint8_t cells;     // 4-components of cell pixels 4-adjacent to the centre
  uint8_t boundary;  // 8-components of boundary pixels
};

// (cells, boundary) for each of the 256 neighbourhoods, bit i = ring position i is a cell.
std::array<RingCounts, 256> make_ring_table() {
  std::array<RingCounts, 256> table{};
  for (int mask = 0; mask < 256; ++mask) {
    auto is_cell = [mask](int i) { return ((mask >> (i & 7)) & 1) != 0; };
    for (int want_cell = 0; want_cell < 2; ++want_cell) {
      std::array<int, 8> parent{};
      for (int i = 0; i < 8; ++i) parent[i] = i;
      auto find = [&parent](int i) {
        while (parent[i] != i) i = parent[i] = parent[parent[i]];
        return i;
      };
      auto join = [&](int a, int b) {
        if (is_cell(a) == bool(want_cell) && is_cell(b) == bool(want_cell)) parent[find(a)] = find(b);
      };
      for (int i = 0; i < 8; ++i) {
        join(i, (i + 1) & 7);  // ring neighbours are 4-adjacent
        if (!want_cell && (i & 1)) join(i, (i + 2) & 7);  // two 4-neighbours of the centre: 8-adjacent
      }
      std::array<bool, 8> counted{};
      int components = 0;
      for (int i = 0; i < 8; ++i) {
        if (is_cell(i) != bool(want_cell)) continue;
        if (want_cell && !(i & 1)) continue;  // a cell component counts only through a 4-neighbour
        const int root = find(i);
        if (!counted[root]) counted[root] = true, ++components;
      }
      if (want_cell) table[mask].cells = static_cast<uint8_t>(components);
      else table[mask].boundary = static_cast<uint8_t>(components);
    }
  }
  return table;
}

const std::array<RingCounts, 256>& ring_table() {
  static const std::array<RingCounts, 256> table = make_ring_table();
  return table;
}

inline int ring_mask(const uint8_t* map, int64_t height, int64_t width, int64_t r, int64_t c) {
  int mask = 0;
  for (int i = 0; i < 8; ++i) {
    const int64_t y = r + kRingDy[i], x = c + kRingDx[i];
    if (y >= 0 && y < height && x >= 0 && x < width && map[y * width + x]) mask |= 1 << i;
  }
  return mask;
}

void warp_one_image(const uint8_t* target, const uint8_t* prediction, int64_t height, int64_t width,
                    uint8_t* warped, uint8_t* classes) {
  const auto& table = ring_table();
  const int64_t size = height * width;
  std::vector<uint8_t> queued(size, 0);
  std::deque<int64_t> queue;
  for (int64_t i = 0; i < size; ++i) {
    warped[i] = target[i] ? 1 : 0;
    if (warped[i] != (prediction[i] ? 1 : 0)) queue.push_back(i), queued[i] = 1;
  }
  auto disagrees = [&](int64_t i) { return warped[i] != (prediction[i] ? 1 : 0); };
  while (!queue.empty()) {
    const int64_t i = queue.front();
    queue.pop_front();
    queued[i] = 0;
    const int64_t r = i / width, c = i % width;
    const RingCounts counts = table[ring_mask(warped, height, width, r, c)];
    if (counts.cells != 1 || counts.boundary != 1) continue;  // not simple (now)
    warped[i] ^= 1;
    for (int k = 0; k < 8; ++k) {
      const int64_t y = r + kRingDy[k], x = c + kRingDx[k];
      if (y < 0 || y >= height || x < 0 || x >= width) continue;
      const int64_t j = y * width + x;
      if (!queued[j] && disagrees(j)) queue.push_back(j), queued[j] = 1;
    }
  }
  for (int64_t i = 0; i < size; ++i) {
    if (!disagrees(i)) {
      classes[i] = kAgree;
      continue;
    }
    const RingCounts counts = table[ring_mask(warped, height, width, i / width, i % width)];
    // In the 8-ring the cell and boundary components alternate, so both counts exceed one together.
    if (warped[i]) classes[i] = counts.cells == 0 ? kCellDeletion : counts.boundary == 0 ? kHoleAddition : kSplit;
    else classes[i] = counts.cells == 0 ? kCellAddition : counts.boundary == 0 ? kHoleDeletion : kMerge;
  }
}

std::tuple<at::Tensor, at::Tensor> simple_point_warp_cpu(const at::Tensor& target, const at::Tensor& prediction) {
  TORCH_CHECK(target.dim() == 3, "simple_point_warp: target must be 3-d (N, H, W), got ", target.dim(), "-d");
  TORCH_CHECK(target.sizes() == prediction.sizes(), "simple_point_warp: prediction shape ", prediction.sizes(),
              " differs from target shape ", target.sizes());
  TORCH_CHECK(target.scalar_type() == at::kByte && prediction.scalar_type() == at::kByte,
              "simple_point_warp: target and prediction must be uint8 (0 = boundary, nonzero = cell)");
  const at::Tensor t = target.contiguous(), p = prediction.contiguous();
  const int64_t n = t.size(0), h = t.size(1), w = t.size(2);
  at::Tensor warped = at::empty({n, h, w}, t.options());
  at::Tensor classes = at::empty({n, h, w}, t.options());
  if (warped.numel() == 0) return {warped, classes};
  const uint8_t* t_data = t.const_data_ptr<uint8_t>();
  const uint8_t* p_data = p.const_data_ptr<uint8_t>();
  uint8_t* w_data = warped.mutable_data_ptr<uint8_t>();
  uint8_t* c_data = classes.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      warp_one_image(t_data + i * h * w, p_data + i * h * w, h, w, w_data + i * h * w, c_data + i * h * w);
  });
  return {warped, classes};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("simple_point_warp", &simple_point_warp_cpu);
}

}  // namespace unet_fast
