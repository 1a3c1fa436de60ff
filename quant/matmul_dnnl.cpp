// oneDNN matmul path (see matmul_dnnl.h).
#include "quant/matmul_dnnl.h"

namespace defkv::quant::detail {

#if !DEFKV_HAVE_DNNL
bool dnnl_available() { return false; }
bool dnnl_preferred(const Matrix&, size_t) { return false; }
bool dnnl_matmul(const Matrix&, const float*, float*, size_t, size_t) { return false; }
#else
bool dnnl_available() { return false; }  // TODO(phase 4)
bool dnnl_preferred(const Matrix&, size_t) { return false; }
bool dnnl_matmul(const Matrix&, const float*, float*, size_t, size_t) { return false; }
#endif

}  // namespace defkv::quant::detail
