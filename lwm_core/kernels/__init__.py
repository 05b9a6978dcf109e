"""Hand-written kernels outside XLA: `cpu` (the decode matvec, C++ through XLA's FFI). The attention
kernels for GPU and TPU are Pallas code and live in `lwm_core.attention`."""
