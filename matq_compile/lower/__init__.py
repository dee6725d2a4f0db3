"""Lowering to TVM: the Relax model (frontend), the bit-slice kernels (kernels), the passes and the pipeline."""
