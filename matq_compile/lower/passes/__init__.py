"""Relax passes of the matq pipeline, one per file (composed in lower/pipeline.py)."""
from matq_compile.lower.passes.dump_ir import dump_ir
from matq_compile.lower.passes.fuse_sibling_linears import (fusable_sets, fuse_sibling_linears, fused_arrays,
                                                            fused_slices)
from matq_compile.lower.passes.lower_dense_linear import head_arrays, head_param_name, lower_dense_linear
from matq_compile.lower.passes.lower_matq_linear import LinearSlice, lower_matq_linear, packed_names
from matq_compile.lower.passes.quantize_const_matmul import quantize_const_matmul
from matq_compile.lower.passes.schedule_kernels import schedule_kernels

__all__ = ["LinearSlice", "dump_ir", "fusable_sets", "fuse_sibling_linears", "fused_arrays", "fused_slices",
           "head_arrays", "head_param_name", "lower_dense_linear", "lower_matq_linear", "packed_names",
           "quantize_const_matmul", "schedule_kernels"]
