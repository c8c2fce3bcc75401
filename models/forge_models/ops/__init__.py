"""Pure-PyTorch reference ops (fp32-exact) and the lazy CUDA-kernel dispatch."""
