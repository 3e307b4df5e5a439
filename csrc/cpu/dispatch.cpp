// Which ISA build of the CPU kernels runs (isa.h): chosen once, at the first kernel call, from CPUID, or forced
// with FER_KERNELS_ISA=scalar|avx2|avx512 (auto or unset: the best the CPU has). Compiled once, baseline code.
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/isa.h"

namespace fer_kernels {
namespace {

const char* const kIsaNames[] = {"scalar", "avx2", "avx512"};
constexpr int kIsaCount = 3;

// The CPU features an ISA build needs that this CPU (and its OS: __builtin_cpu_supports checks that the OS saves
// the AVX / AVX-512 registers) lacks; empty when it can run.
std::vector<std::string> missing_features(Isa isa) {
  std::vector<std::string> missing;
#if FER_X86
  __builtin_cpu_init();
  auto need = [&](bool ok, const char* feature) {
    if (!ok) missing.emplace_back(feature);
  };
  if (isa >= Isa::avx2) {
    need(__builtin_cpu_supports("avx2"), "avx2");
    need(__builtin_cpu_supports("fma"), "fma");
  }
  if (isa >= Isa::avx512) {
    need(__builtin_cpu_supports("avx512f"), "avx512f");
    need(__builtin_cpu_supports("avx512bw"), "avx512bw");
    need(__builtin_cpu_supports("avx512vl"), "avx512vl");
    need(__builtin_cpu_supports("avx512dq"), "avx512dq");
  }
#else
  if (isa != Isa::scalar) missing.emplace_back("an x86-64 CPU");
#endif
  return missing;
}

std::vector<std::string> supported_names() {
  std::vector<std::string> out;
  for (int i = 0; i < kIsaCount; ++i)
    if (missing_features(Isa(i)).empty()) out.emplace_back(kIsaNames[i]);
  return out;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

Isa best_isa() {
  for (int i = kIsaCount - 1; i > 0; --i)
    if (missing_features(Isa(i)).empty()) return Isa(i);
  return Isa::scalar;
}

// name: scalar, avx2, avx512 or auto (the best); `what` names where it came from in the error.
Isa parse_isa(const std::string& name, const char* what) {
  if (name == "auto" || name.empty()) return best_isa();
  for (int i = 0; i < kIsaCount; ++i) {
    if (name != kIsaNames[i]) continue;
    const auto missing = missing_features(Isa(i));
    TORCH_CHECK(missing.empty(), what, "=", name, ": this CPU lacks ", joined(missing),
                "; the ISAs it can run: ", joined(supported_names()));
    return Isa(i);
  }
  TORCH_CHECK(false, what, ": expected one of scalar, avx2, avx512 or auto, got '", name, "'");
}

std::atomic<int> g_isa{-1};
std::mutex g_isa_mutex;

std::string cpu_isa() { return kIsaNames[(int)active_isa()]; }

std::vector<std::string> cpu_isas() { return supported_names(); }

// Tests run the kernels under every ISA the CPU has; returns the ISA that was active (FER_KERNELS_ISA's when none
// was chosen yet, so that setting it back restores what the environment asked for).
std::string set_cpu_isa(const std::string& name) {
  const Isa isa = parse_isa(name, "isa");
  const Isa old = active_isa();
  g_isa.store((int)isa);
  return kIsaNames[(int)old];
}

}  // namespace

Isa active_isa() {
  const int v = g_isa.load(std::memory_order_relaxed);
  if (v >= 0) return Isa(v);
  std::lock_guard<std::mutex> lock(g_isa_mutex);
  if (g_isa.load() < 0) {
    const char* env = std::getenv("FER_KERNELS_ISA");
    g_isa.store((int)parse_isa(env ? env : "", "FER_KERNELS_ISA"));  // throws (and stays unset) if impossible
  }
  return Isa(g_isa.load());
}

}  // namespace fer_kernels

TORCH_LIBRARY_IMPL(fer_kernels, CompositeExplicitAutograd, m) {
  m.impl("_cpu_isa", &fer_kernels::cpu_isa);
  m.impl("_cpu_isas", &fer_kernels::cpu_isas);
  m.impl("_set_cpu_isa", &fer_kernels::set_cpu_isa);
}
