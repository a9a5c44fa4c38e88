// Power probes (kernels/cuda/probe.cu) for `troupe bench kernels --group step_energy`: not model ops, but the
// floors a step's kernels are read against. read_probe streams `bytes` (16-byte aligned) once and writes
// the XOR of each block's 32-bit words to sink[block] (read_probe_blocks() words); spin_probe keeps every SM
// busy-waiting for `cycles` SM clocks.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::kernels::cuda {

int read_probe_blocks();
void read_probe(const void* data, int64_t bytes, uint32_t* sink, cudaStream_t stream);
void spin_probe(int64_t cycles, uint32_t* sink, cudaStream_t stream);

}  // namespace troupe::kernels::cuda
