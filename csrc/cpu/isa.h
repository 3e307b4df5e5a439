// The CPU instruction sets the kernels are built for, and how a piece of code is compiled for one of them.
//
// Every op file in csrc/cpu is compiled once per ISA (setup.py generates the wrappers build/fer_isa/<op>.<isa>.cpp,
// which define FER_ISA and FER_ISA_LEVEL and include the op file):
//   scalar  (level 0)  the compiler's baseline: SSE2 on x86-64, NEON on aarch64; 16-byte vectors
//   avx2    (level 1)  AVX2 + FMA; 32-byte vectors                                    (x86-64 only)
//   avx512  (level 2)  AVX-512 F, BW, VL, DQ (+ AVX2, FMA); 64-byte vectors            (x86-64 only)
// No file is compiled with -march: the ISA of a build is a target pragma around the kernel code only
// (FER_ISA_BEGIN / FER_ISA_END, after every system and torch header), so the functions of torch and the standard
// library that the kernels call or instantiate stay baseline code, and a CPU without AVX2 never meets an AVX2
// instruction. The kernels of each ISA live in namespace fer_kernels::<isa>; csrc/cpu/dispatch.cpp picks one at run
// time (CPUID, or FER_KERNELS_ISA).
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define FER_X86 1
#else
#define FER_X86 0
#endif

#define FER_TARGET_AVX2 "avx2,fma"
#define FER_TARGET_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512"

#if FER_X86 && defined(__clang__)
#define FER_PUSH_TARGET(t) _Pragma(FER_STR(clang attribute push(__attribute__((target(t))), apply_to = function)))
#define FER_POP_TARGET _Pragma("clang attribute pop")
#elif FER_X86 && defined(__GNUC__)
#define FER_PUSH_TARGET(t) _Pragma("GCC push_options") _Pragma(FER_STR(GCC target(t)))
#define FER_POP_TARGET _Pragma("GCC pop_options")
#endif
#define FER_STR(x) #x

// FER_AVX2_BEGIN ... FER_AVX2_END: code compiled for AVX2 (likewise AVX512); nothing on other architectures.
#if FER_X86
#define FER_AVX2_BEGIN FER_PUSH_TARGET(FER_TARGET_AVX2)
#define FER_AVX2_END FER_POP_TARGET
#define FER_AVX512_BEGIN FER_PUSH_TARGET(FER_TARGET_AVX512)
#define FER_AVX512_END FER_POP_TARGET
#endif

// The ISA of this translation unit (only in the per-ISA builds of the op files).
#if defined(FER_ISA_LEVEL)
#if FER_ISA_LEVEL == 2
#define FER_VEC_BYTES 64
#define FER_ISA_PUSH FER_AVX512_BEGIN
#define FER_ISA_POP FER_AVX512_END
#elif FER_ISA_LEVEL == 1
#define FER_VEC_BYTES 32
#define FER_ISA_PUSH FER_AVX2_BEGIN
#define FER_ISA_POP FER_AVX2_END
#else
#define FER_VEC_BYTES 16
#define FER_ISA_PUSH
#define FER_ISA_POP
#endif
// Opens/closes namespace fer_kernels::<FER_ISA> with the ISA's code generation.
#define FER_ISA_BEGIN FER_ISA_PUSH namespace fer_kernels { namespace FER_ISA {
#define FER_ISA_END } } FER_ISA_POP
#endif

namespace fer_kernels {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// The ISA whose kernels run: FER_KERNELS_ISA if set (an error, raised at the first kernel call, if the CPU lacks
// it), else the best this CPU has. Set by _set_cpu_isa (tests). csrc/cpu/dispatch.cpp.
Isa active_isa();

}  // namespace fer_kernels
