"""Relax passes of the matq pipeline, one per file (composed in lower/pipeline.py)."""
from matq_compile.kernel_units import LinearSlice
from matq_compile.lower.passes.dump_ir import dump_ir
from matq_compile.lower.passes.fuse_sibling_linears import fuse_sibling_linears
from matq_compile.lower.passes.lower_dense_linear import head_param_name, lower_dense_linear
from matq_compile.lower.passes.lower_embedding import lower_embedding
from matq_compile.lower.passes.lower_matq_linear import lower_matq_linear, packed_names
from matq_compile.lower.passes.quantize_const_matmul import quantize_const_matmul
from matq_compile.lower.passes.schedule_kernels import schedule_kernels

__all__ = ["LinearSlice", "dump_ir", "fuse_sibling_linears", "head_param_name", "lower_dense_linear",
           "lower_embedding", "lower_matq_linear", "packed_names", "quantize_const_matmul", "schedule_kernels"]
