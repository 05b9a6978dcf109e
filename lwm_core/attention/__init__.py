"""Attention. `dispatch.choose` decides which implementation runs (from config, mesh, backend and
phase); the model runs its plan. The modules, and what each imports from this package (no cycles):

    dispatch.py      the decision table, the attention config vocabularies,   nothing (the kernels
                     the registry of ring-step kernels                         lazily, in block_fns)
    ring.py          ring attention over sp; sharded-cache decode attention   dispatch, blocks
    layout.py        sequence layouts over sp (zigzag)                         dispatch
    blockwise.py     online-softmax attention in tiles on one device          blocks
    pallas_gpu.py,   ring-step kernels of the block contract (Triton, Mosaic)  blocks, reference
    pallas_tpu.py
    blocks.py        the block contract: block_forward/backward in plain JAX  reference
                     (the kernels' twin), check_block_args, tile fitting
    causal_block.py  causal-block attention with its hand-written gradient    reference
    cpu_flash.py     the fused CPU attention kernel (C++, cpu_attention.cc)    lwm_core.cpu_decode (which
                     with its gradient: plan kind "cpu_flash"                 builds and registers it)
    reference.py     dense attention and cached (decode) attention             nothing

The CPU decode kernels (C++, one new token per row) are `lwm_core.cpu_decode`: plan kind "cpu_kernel".
That module builds all of lwm's C++ CPU kernels (decode and `cpu_attention.cc`) into one library.
"""
