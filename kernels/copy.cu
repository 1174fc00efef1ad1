// Reference source of copy.ptx. It documents what the PTX does; the shipped PTX is written by
// hand (kernels/README.md says why and how it is checked). The two must stay equivalent.
#include <stdint.h>

extern "C" __global__ void copy_v4(uint4 *dst, const uint4 *src, uint64_t n) {
    uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dst[i] = src[i];
    }
}

// spin_wait: see spin.ptx. Holds a stream until the host releases `flag` or `timeout_ns` pass.
extern "C" __global__ void spin_wait(volatile const unsigned int *flag, unsigned long long timeout_ns)
{
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    while (*flag == 0) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (now - start >= timeout_ns) return;
    }
}
