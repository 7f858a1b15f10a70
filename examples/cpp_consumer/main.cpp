// Calls unet_fast::center_crop_concat from C++ through the PyTorch dispatcher (the op is found by
// its schema name; linking unet_fast::unet_fast_ops registers it) and checks the result against
// ATen's own crop and concatenation. Exit status 0 when they agree.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

int main() {
  auto center_crop_concat = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("unet_fast::center_crop_concat", "")
                                .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  at::manual_seed(0);
  // skip (2, 3, 9, 10) cropped to x's 5x6 at offset (2, 2), then x's 4 channels.
  at::Tensor skip = at::randn({2, 3, 9, 10});
  at::Tensor x = at::randn({2, 4, 5, 6});
  at::Tensor out = center_crop_concat.call(skip, x);
  at::Tensor expected = at::cat({skip.slice(2, 2, 7).slice(3, 2, 8), x}, 1);
  if (!at::equal(out, expected)) {
    std::cerr << "center_crop_concat differs from at::cat of the centre crop\n";
    return 1;
  }
  std::cout << "center_crop_concat " << out.sizes() << ": ok\n";
  return 0;
}
