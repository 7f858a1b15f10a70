// Input checks, output allocation and mode parsing for elastic_warp, shared by its CPU and CUDA
// kernels. The Python wrapper raises friendlier errors first; these guard direct torch.ops calls.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <utility>

#include "ops/elastic_warp.h"

namespace unet_fast {
namespace elastic {

inline Interp parse_interpolation(c10::string_view mode) {
  if (mode == "nearest") return Interp::kNearest;
  if (mode == "bilinear") return Interp::kBilinear;
  if (mode == "bicubic") return Interp::kBicubic;
  TORCH_CHECK(false, "elastic_warp: interpolation must be nearest, bilinear or bicubic, got ", mode);
}

inline Padding parse_padding(c10::string_view mode) {
  if (mode == "zeros") return Padding::kZeros;
  if (mode == "border") return Padding::kBorder;
  if (mode == "reflection") return Padding::kReflection;
  TORCH_CHECK(false, "elastic_warp: padding_mode must be zeros, border or reflection, got ", mode);
}

inline bool is_integer_dtype(at::ScalarType t) {
  return at::isIntegralType(t, /*includeBool=*/true);
}

// The arithmetic dtype of an image: float64 for float64 images, float32 otherwise.
inline at::ScalarType accumulate_dtype(const at::Tensor& image) {
  return image.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct PreparedWarp {
  WarpGeometry geometry;
  Interp interpolation;
  Padding padding;
  at::Tensor affine, intensity;  // contiguous, or undefined
  at::Tensor out, label_out, weight_out;  // label_out / weight_out have 0 elements when not asked for
};

inline TensorStrides strides_of(const at::Tensor& t) {
  if (t.dim() == 4) return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
  return {t.stride(0), 0, t.stride(1), t.stride(2)};
}

inline PreparedWarp prepare_elastic_warp(const at::Tensor& image, const at::Tensor& displacement,
                                         const std::optional<at::Tensor>& label,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& affine,
                                         const std::optional<at::Tensor>& intensity,
                                         c10::string_view interpolation, c10::string_view padding_mode,
                                         at::IntArrayRef out_size, at::IntArrayRef offset) {
  PreparedWarp w;
  w.interpolation = parse_interpolation(interpolation);
  w.padding = parse_padding(padding_mode);
  TORCH_CHECK(image.dim() == 4, "elastic_warp: image must be 4-d (N, C, H, W)");
  const bool integer_image = is_integer_dtype(image.scalar_type());
  TORCH_CHECK(integer_image || at::isFloatingType(image.scalar_type()),
              "elastic_warp: image must be a float or integer tensor");
  if (integer_image) w.interpolation = Interp::kNearest;
  const int64_t n = image.size(0), h = image.size(2), wd = image.size(3);
  TORCH_CHECK(h >= 1 && wd >= 1 && h < (int64_t(1) << 22) && wd < (int64_t(1) << 22),
              "elastic_warp: image height and width must be in [1, 2^22)");
  const at::ScalarType acc = accumulate_dtype(image);
  TORCH_CHECK(displacement.dim() == 4 && displacement.size(0) == n && displacement.size(1) == 2 &&
                  displacement.size(2) >= 1 && displacement.size(3) >= 1,
              "elastic_warp: displacement must be (N, 2, gh, gw) with the image's N");
  TORCH_CHECK(displacement.scalar_type() == acc, "elastic_warp: displacement must have dtype ", acc);
  TORCH_CHECK(displacement.device() == image.device(), "elastic_warp: displacement is on another device");
  TORCH_CHECK(out_size.size() == 2 && out_size[0] >= 1 && out_size[1] >= 1,
              "elastic_warp: out_size must be two positive integers");
  TORCH_CHECK(offset.size() == 2, "elastic_warp: offset must be two integers");

  WarpGeometry& g = w.geometry;
  g.batch = n;
  g.channels = image.size(1);
  g.height = h;
  g.width = wd;
  g.out_height = out_size[0];
  g.out_width = out_size[1];
  g.offset_y = offset[0];
  g.offset_x = offset[1];
  g.grid_height = displacement.size(2);
  g.grid_width = displacement.size(3);
  g.dense = g.grid_height == h && g.grid_width == wd;
  g.image = strides_of(image);
  g.displacement = strides_of(displacement);
  g.label_bytes = 0;
  g.weight_is_float = false;

  const bool channels_last = image.is_contiguous(at::MemoryFormat::ChannelsLast) && !image.is_contiguous();
  w.out = at::empty({n, g.channels, g.out_height, g.out_width},
                    image.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                : at::MemoryFormat::Contiguous));
  g.out = strides_of(w.out);

  auto check_plane = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == n && t.size(1) == h && t.size(2) == wd, "elastic_warp: ", name,
                " must be (N, H, W) like the image");
    TORCH_CHECK(t.device() == image.device(), "elastic_warp: ", name, " is on another device");
  };
  if (label.has_value()) {
    check_plane(*label, "label");
    TORCH_CHECK(is_integer_dtype(label->scalar_type()), "elastic_warp: label must be an integer tensor");
    g.label = strides_of(*label);
    g.label_bytes = static_cast<int>(label->element_size());
    w.label_out = at::empty({n, g.out_height, g.out_width}, label->options());
  } else {
    w.label_out = at::empty({0}, image.options().dtype(at::kLong));
  }
  if (weight.has_value()) {
    check_plane(*weight, "weight");
    const at::ScalarType wt = weight->scalar_type();
    TORCH_CHECK((!integer_image && wt == image.scalar_type()) || wt == at::kFloat,
                "elastic_warp: weight must have the image's float dtype or float32");
    g.weight = strides_of(*weight);
    g.weight_is_float = wt == at::kFloat;
    w.weight_out = at::empty({n, g.out_height, g.out_width}, weight->options());
  } else {
    w.weight_out = at::empty({0}, image.options().dtype(integer_image ? at::kFloat : image.scalar_type()));
  }
  if (affine.has_value()) {
    TORCH_CHECK(affine->dim() == 3 && affine->size(0) == n && affine->size(1) == 2 && affine->size(2) == 3,
                "elastic_warp: affine must be (N, 2, 3)");
    TORCH_CHECK(affine->scalar_type() == acc, "elastic_warp: affine must have dtype ", acc);
    TORCH_CHECK(affine->device() == image.device(), "elastic_warp: affine is on another device");
    w.affine = affine->contiguous();
  }
  if (intensity.has_value()) {
    TORCH_CHECK(!integer_image, "elastic_warp: intensity variation needs a float image");
    TORCH_CHECK(intensity->dim() == 2 && intensity->size(0) == n && intensity->size(1) == 3,
                "elastic_warp: intensity must be (N, 3): contrast, brightness, gamma");
    TORCH_CHECK(intensity->scalar_type() == acc, "elastic_warp: intensity must have dtype ", acc);
    TORCH_CHECK(intensity->device() == image.device(), "elastic_warp: intensity is on another device");
    w.intensity = intensity->contiguous();
  }
  return w;
}

template <typename acc_t>
WarpPointers<acc_t> warp_pointers(const PreparedWarp& w, const at::Tensor& image, const at::Tensor& displacement,
                                  const std::optional<at::Tensor>& label, const std::optional<at::Tensor>& weight) {
  WarpPointers<acc_t> p;
  p.image = image.const_data_ptr();
  p.out = w.out.mutable_data_ptr();
  p.displacement = displacement.const_data_ptr<acc_t>();
  p.affine = w.affine.defined() ? w.affine.const_data_ptr<acc_t>() : nullptr;
  p.intensity = w.intensity.defined() ? w.intensity.const_data_ptr<acc_t>() : nullptr;
  p.label = label.has_value() ? label->const_data_ptr() : nullptr;
  p.label_out = label.has_value() ? w.label_out.mutable_data_ptr() : nullptr;
  p.weight = weight.has_value() ? weight->const_data_ptr() : nullptr;
  p.weight_out = weight.has_value() ? w.weight_out.mutable_data_ptr() : nullptr;
  return p;
}

// Calls f(std::integral_constant<Padding, P>{}) for the runtime padding mode.
template <typename F>
void dispatch_padding(Padding padding, F&& f) {
  switch (padding) {
    case Padding::kZeros: f(std::integral_constant<Padding, Padding::kZeros>{}); break;
    case Padding::kBorder: f(std::integral_constant<Padding, Padding::kBorder>{}); break;
    case Padding::kReflection: f(std::integral_constant<Padding, Padding::kReflection>{}); break;
  }
}

// Calls f(std::integral_constant<Interp, I>{}, std::integral_constant<Padding, P>{}) for the
// runtime modes, so that kernels are specialised on both.
template <typename F>
void dispatch_modes(Interp interpolation, Padding padding, F&& f) {
  auto with_padding = [&](auto interp) { dispatch_padding(padding, [&](auto pad) { f(interp, pad); }); };
  switch (interpolation) {
    case Interp::kNearest: with_padding(std::integral_constant<Interp, Interp::kNearest>{}); break;
    case Interp::kBilinear: with_padding(std::integral_constant<Interp, Interp::kBilinear>{}); break;
    case Interp::kBicubic: with_padding(std::integral_constant<Interp, Interp::kBicubic>{}); break;
  }
}

// Calls f(Raw{}) with an unsigned type of the integer image's element size.
template <typename F>
void dispatch_raw(int64_t bytes, F&& f) {
  switch (bytes) {
    case 1: f(uint8_t{}); break;
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    default: f(uint64_t{}); break;
  }
}

}  // namespace elastic
}  // namespace unet_fast
