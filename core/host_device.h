// TROUPE_HOST_DEVICE marks functions a CUDA kernel calls as well as the host (core/rng.h,
// core/sampling_weight.h): __host__ __device__ under nvcc, nothing elsewhere, so core stays free of CUDA.
#pragma once

#ifndef TROUPE_HOST_DEVICE
#if defined(__CUDACC__)
#define TROUPE_HOST_DEVICE __host__ __device__
#else
#define TROUPE_HOST_DEVICE
#endif
#endif
