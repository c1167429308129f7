// Machine ceilings for roofline reports (`mixtral bench`). Each measurement uses every thread
// of the pool, runs for roughly 0.2-0.5 s and returns the best of a few runs.
#pragma once

namespace mx {

class ThreadPool;

// DRAM read bandwidth in GB/s (1e9 bytes/s): all threads stream disjoint parts of a buffer
// several times larger than the last-level cache.
double measure_read_bandwidth_gbps(ThreadPool& pool);

// Peak int8 multiply-accumulate throughput in GOPS (1e9 ops/s, 2 ops per multiply-add), from
// register-resident vpdpbusd (AVX512-VNNI) if present, else vpmaddubsw-based sequences
// (AVX-512BW / AVX2), else scalar.
double measure_int8_gops(ThreadPool& pool);

// Peak bf16 dot-product throughput in GFLOPS (2 flops per multiply-add), from vdpbf16ps if the
// CPU has AVX512-BF16, else f32 FMA (AVX-512 or AVX2), else scalar.
double measure_bf16_gflops(ThreadPool& pool);

// Which instruction each measurement used ("vpdpbusd zmm", "vfmadd231ps ymm", ...).
const char* int8_gops_kernel_name();
const char* bf16_gflops_kernel_name();

}  // namespace mx
