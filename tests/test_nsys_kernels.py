"""Kernel names: short display names and classes, on names real profiles contain."""

from __future__ import annotations

import csv

import pytest

from lmreport.kernels import CLASSES, classify, display_name, parse_kernel_name
from test_nsys_synthetic import ADDCDIV, BMM, COPY, FILL, LOG_SOFTMAX, MEAN, MUL, NLL, SOFTMAX, SUM, WHERE

CASES = [  # raw name, display name, class
    ("ampere_sgemm_128x64_tn", "ampere_sgemm_128x64_tn", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nt_align1>(T1::Params)",
     "cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nt_align1>", "matmul"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
     None, "matmul"),
    ("nvjet_sm90_tst_64x8_64x16_4x1_v_bz_TNT", "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<(int)32, (int)16, int, float, __nv_bfloat16, float, __nv_bfloat16, (bool)0, "
     "float, __nv_bfloat16, __nv_bfloat16, (bool)1, (bool)0, (bool)0>(cublasLt::cublasSplitKParams<T6>, const T4 *, "
     "const T10 *, T9 *, T5 *, const T6 *, const T6 *, const T11 *, const T4 *, T11 *, void *, long, T6 *, int *, T6 *, "
     "const T6 *, const T6 *, const T6 *, const T6 *)", "splitKreduce_kernel", "matmul"),
    ("triton_tem_fused_mm_3", "triton_tem_fused_mm_3", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<(int)64, (int)128, (int)128, (int)4, (bool)0, "
     "(bool)0, cutlass::half_t, Flash_kernel_traits<(int)64, (int)128, (int)128, (int)4, cutlass::half_t>>, (bool)0, "
     "(bool)1, (bool)0, (bool)0, (bool)1, (bool)1, (bool)0, (bool)0>(pytorch_flash::Flash_fwd_params)",
     "flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention"),
    ("fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<float, cutlass::arch::Sm80, "
     "(bool)1, (int)64, (int)64, (int)64, (bool)1, (bool)1>::Params)", "fmha_cutlassF_f32_aligned_64x64_rf_sm80",
     "attention"),
    (SOFTMAX, "softmax_warp_forward", "softmax"),
    (LOG_SOFTMAX, "cunn_SoftMaxForward", "softmax"),
    ("triton_red_fused__softmax_1", "triton_red_fused__softmax_1", "softmax"),
    (MUL, "vectorized_elementwise_kernel<MulFunctor>", "elementwise"),
    (ADDCDIV, "vectorized_elementwise_kernel<addcdiv_cuda_kernel>", "elementwise"),
    ("triton_poi_fused_add_mul_silu_0", "triton_poi_fused_add_mul_silu_0", "elementwise"),
    ("vectorAdd(const float *, const float *, float *, int)", "vectorAdd", "elementwise"),
    (MEAN, "reduce_kernel<MeanOps>", "reduction"),
    (SUM, "reduce_kernel<sum_functor>", "reduction"),
    (NLL, "nll_loss_forward_reduce_cuda_kernel_2d", "reduction"),
    ("triton_per_fused_mean_pow_rsqrt_2", "triton_per_fused_mean_pow_rsqrt_2", "reduction"),
    (COPY, "elementwise_kernel<direct_copy_kernel_cuda>", "copy/memset"),
    (FILL, "vectorized_elementwise_kernel<FillFunctor>", "copy/memset"),
    (WHERE, "elementwise_kernel<masked_fill_kernel>", "copy/memset"),
    ("void at::native::indexSelectLargeIndex<float, long, unsigned int, (int)2, (int)2, (int)-2, (bool)1>("
     "at::cuda::detail::TensorInfo<T1, T3>, at::cuda::detail::TensorInfo<const T1, T3>, "
     "at::cuda::detail::TensorInfo<const T2, T3>, int, int, T3, T3, long)", "indexSelectLargeIndex", "copy/memset"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<(int)4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, (int)4, "
     "(at::native::ADAM_MODE)1, (bool)0>, bool, float, float, float, float, float, double *, float *, float *>"
     "(T1, T2, T3...)", "multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void tensorrt_llm::kernels::cutlass_kernels::finalizeMoeRoutingKernel<__nv_bfloat16, __nv_bfloat16, "
     "__nv_bfloat16, (int)1>(const T1 *, T2 *)", "finalizeMoeRoutingKernel", "other"),
    ("void vllm::moe::topkGating<(int)8, (int)128>(const float *, int)", "topkGating", "other"),
    (BMM, "cutlass::Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nn_align1>", "matmul"),
]


@pytest.mark.parametrize("raw, display, cls", CASES)
def test_display_name_and_class(raw, display, cls):
    assert classify(raw) == cls
    if display is not None:
        assert display_name(raw) == display
    assert len(display_name(raw)) <= 80


def test_truncated_names_keep_their_class_and_say_they_are_cut():
    k = parse_kernel_name("void at::native::vectorized_elementwise_kernel<(int)4, at::native::BinaryFunctor<float, f…")
    assert k.truncated and k.display.endswith("…") and k.kernel_class == "elementwise"
    assert parse_kernel_name("ampere_sgemm_128x64_tn").truncated is False


def test_every_kernel_of_the_real_sample_gets_a_class(samples_dir):
    path = samples_dir / "nsys" / "gujialiang123_MOEresearch__AT_OFF_CG_OFF_cuda_gpu_kern_sum.csv"
    rows = list(csv.DictReader(path.open()))
    classes = {r["Name"][:60]: classify(r["Name"]) for r in rows}
    assert set(classes.values()) <= set(CLASSES)
    assert classify(rows[0]["Name"]) == "matmul" and display_name(rows[0]["Name"]) == "cutlass::device_kernel<GemmUniversal>"
    flash = [r["Name"] for r in rows if "FlashAttnFwdSm90" in r["Name"]]
    assert flash and {classify(n) for n in flash} == {"attention"}
    assert max(len(display_name(r["Name"])) for r in rows) <= 80 < max(len(r["Name"]) for r in rows)
