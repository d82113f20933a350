"""Compile-check rendered kernels on a machine without the GPU they target.

* **CUDA**: the translation unit MLX's ``cuda_kernel`` hands to NVRTC, compiled by NVRTC itself
  with MLX's options (``--device-as-default-execution-space --gpu-architecture=sm_90a``).
  Needs the NVRTC library (the ``nvidia-cuda-nvrtc`` wheel, or ``ZMLX_NVRTC`` naming
  ``libnvrtc.so``), CUDA headers (``CUDA_HOME`` or the ``nvidia-cuda-runtime`` wheel) and
  MLX's CUDA device headers (the ``mlx/backend/cuda/device/*.cuh`` files of the MLX source
  tree): point ``ZMLX_MLX_CUDA_INCLUDE`` at a folder holding
  ``mlx/backend/cuda/device/utils.cuh``.
* **Metal**: there is no Metal compiler off Apple platforms. The kernel is compiled as C++17 by
  the host C++ compiler (``-fsyntax-only``) against a shim that declares the Metal names
  zmlx's dialect uses (address-space qualifiers, ``half``, ``bfloat16_t``, SIMD-group and
  barrier functions, ``metal::`` math). This catches undeclared names, arity and type errors
  in the body and header; it cannot catch Metal-only rules such as address-space mismatches.

Both work on :class:`~zmlx.core.kernel.Launch` records from :func:`~zmlx.core.kernel.capture`.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .dialect import shape_args, template_lines
from .dtypes import C_INT_NAMES
from .kernel import Launch, cuda_function_name

_CUDA_TYPES = {
    **C_INT_NAMES,
    mx.float16: "__half",
    mx.bfloat16: "__nv_bfloat16",
    mx.float32: "float",
}
_METAL_TYPES = {
    **C_INT_NAMES,
    mx.float16: "half",
    mx.bfloat16: "bfloat16_t",
    mx.float32: "float",
}

METAL_SHIM = r"""
// Host-C++ stand-ins for the Metal names zmlx kernels use (syntax checking only).
#include <cmath>
#include <cstdint>
#include <limits>
#define device
#define constant
#define threadgroup
#define thread
typedef unsigned int uint;
typedef unsigned short ushort;
struct uint3 { uint x, y, z; };
struct uint4 {
  uint x, y, z, w;
  uint4() = default;
  uint4(uint a, uint b, uint c, uint d) : x(a), y(b), z(c), w(d) {}
};
typedef _Float16 half;
struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  bfloat16_t(float f);
  operator float() const;
};
enum class mem_flags { mem_none, mem_device, mem_threadgroup };
void threadgroup_barrier(mem_flags);
template <typename T> T simd_shuffle_xor(T v, ushort m);
template <typename T, typename U> T as_type(U v);
template <typename T> T simd_shuffle(T v, ushort lane);
template <typename T> T simd_sum(T v);
template <typename T> T simd_max(T v);
template <typename T> T simd_min(T v);
template <typename T> struct atomic { T v; };
enum memory_order { memory_order_relaxed };
template <typename T> void atomic_fetch_add_explicit(atomic<T>* p, T v, memory_order);
namespace metal {
using std::exp; using std::log; using std::log2; using std::sqrt; using std::fabs;
using std::floor; using std::ceil; using std::isnan; using std::isinf; using std::fma;
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float max(float a, float b) { return a > b ? a : b; }
inline float min(float a, float b) { return a < b ? a : b; }
namespace precise {
using std::sin; using std::cos; using std::tan; using std::tanh; using std::atan;
using std::sinh; using std::cosh; using std::pow; using std::exp; using std::log;
using std::sqrt;
}
}
using namespace metal;
"""


@dataclass
class CheckResult:
    ok: bool
    backend: str
    kernel: str
    log: str
    source: str


def cuda_source(launch: Launch) -> str:
    """The translation unit MLX's ``cuda_kernel`` builds for this launch (for NVRTC)."""
    k = launch.kernel
    header, body = k.render("cuda")
    kname = k.mlx_name("cuda")
    if launch.min_groups:
        threads = launch.threadgroup[0] * launch.threadgroup[1] * launch.threadgroup[2]
        kname, header, body = k.bounded_source(launch.template, threads, launch.min_groups)
    fname = cuda_function_name(kname, launch.template)
    params = []
    for name, (dtype, shape) in zip(k.inputs, launch.inputs):
        params.append(f"    const {_CUDA_TYPES[dtype]}* {name}")
        if len(shape) > 0:
            cuda_t = {"shape": "Shape", "strides": "Strides", "ndim": "int"}
            params += [f"    const __grid_constant__ {cuda_t[a]} {name}_{a}"
                       for a in shape_args(name, body)]  # fmt: skip
    for name, dtype in zip(k.outputs, launch.output_dtypes):
        params.append(f"    {_CUDA_TYPES[dtype]}* {name}")
    consts = template_lines(launch.template, _CUDA_TYPES.__getitem__)
    return (
        '#include "mlx/backend/cuda/device/utils.cuh"\n#include <cooperative_groups.h>\n'
        + header
        + "\nnamespace mlx::core::cu {\nnamespace cg = cooperative_groups;\n"
        + f"__global__ void {fname}(\n"
        + ",\n".join(params)
        + ") {\n"
        + "\n".join(consts)
        + "\n"
        + body
        + "\n}\n} // namespace mlx::core::cu\n"
        # MLX names the kernel to NVRTC as this expression, after the whole source.
        + f"using zx_kernel_type = decltype(&mlx::core::cu::{fname});\n"
    )


def metal_source(launch: Launch) -> str:
    """A host-C++ rendering of the Metal kernel (template values as typedefs) for the shim."""
    k = launch.kernel
    header, body = k.render("metal")
    params = []
    for name, (dtype, shape) in zip(k.inputs, launch.inputs):
        size = 1
        for s in shape:
            size *= s
        space = "constant" if size < 8 else "device"
        ref = "&" if len(shape) == 0 else "*"
        params.append(f"  const {space} {_METAL_TYPES[dtype]}{ref} {name}")
        if len(shape) > 0:
            metal_t = {"shape": "int*", "strides": "int64_t*", "ndim": "int&"}
            params += [f"  const constant {metal_t[a]} {name}_{a}" for a in shape_args(name, body)]
    for name, dtype in zip(k.outputs, launch.output_dtypes):
        t = _METAL_TYPES[dtype]
        params.append(f"  device {f'atomic<{t}>' if k.atomic_outputs else t}* {name}")
    attrs = {
        "thread_position_in_grid": "uint3",
        "thread_position_in_threadgroup": "uint3",
        "threadgroup_position_in_grid": "uint3",
        "threads_per_threadgroup": "uint3",
        "threadgroups_per_grid": "uint3",
        "threads_per_grid": "uint3",
        "thread_index_in_simdgroup": "uint",
        "simdgroup_index_in_threadgroup": "uint",
    }
    for a, t in attrs.items():
        if a in body:
            params.append(f"  {t} {a}")
    consts = template_lines(launch.template, _METAL_TYPES.__getitem__)
    return (
        METAL_SHIM
        + header
        + f"\nvoid {k.mlx_name('metal')}(\n"
        + ",\n".join(params)
        + ") {\n"
        + "\n".join(consts)
        + "\n"
        + body
        + "\n}\n"
    )


def cuda_include_dir() -> str | None:
    """The folder holding MLX's CUDA device headers, from ``ZMLX_MLX_CUDA_INCLUDE``."""
    d = os.environ.get("ZMLX_MLX_CUDA_INCLUDE")
    if d and (Path(d) / "mlx/backend/cuda/device/utils.cuh").is_file():
        return d
    return None


def _nvrtc_path() -> str | None:
    env = os.environ.get("ZMLX_NVRTC")
    if env and Path(env).is_file():
        return env
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        for root in nvidia.__path__:
            hits = sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
            hits = [h for h in hits if "builtins" not in h]
            if hits:
                return hits[0]
    except ImportError:
        pass
    return None


def _cuda_headers() -> str | None:
    for root in filter(None, [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]):
        if (Path(root) / "include" / "cuda_fp16.h").is_file():
            return str(Path(root) / "include")
    try:
        import nvidia

        for root in nvidia.__path__:
            for inc in sorted(glob.glob(os.path.join(root, "*", "include"))):
                if (Path(inc) / "cuda_fp16.h").is_file():
                    return inc
    except ImportError:
        pass
    nvcc = shutil.which("nvcc")
    if nvcc:
        inc = Path(nvcc).resolve().parent.parent / "include"
        if (inc / "cuda_fp16.h").is_file():
            return str(inc)
    return None


def cuda_available() -> bool:
    """True when NVRTC, CUDA headers and MLX's CUDA device headers are all found."""
    return None not in (_nvrtc_path(), _cuda_headers(), cuda_include_dir())


def _nvrtc_compile(source: str, options: list[str]) -> tuple[bool, str]:
    lib = ctypes.CDLL(_nvrtc_path())
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram failed ({rc})"
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, buf.value.decode(errors="replace")


def metal_available() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None


_OK_CACHE: set[str] = set()


def _run(cmd: list[str], source: str, suffix: str) -> tuple[bool, str]:
    digest = hashlib.sha256((" ".join(cmd) + source).encode()).hexdigest()
    if digest in _OK_CACHE:
        return True, ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"k{suffix}"
        path.write_text(source)
        proc = subprocess.run(
            cmd + [str(path)], capture_output=True, text=True, cwd=tmp, timeout=300
        )
    ok = proc.returncode == 0
    if ok:
        _OK_CACHE.add(digest)
    return ok, proc.stdout + proc.stderr


def check_cuda(launch: Launch) -> CheckResult:
    """Compile the CUDA rendering of ``launch`` with NVRTC, as MLX does, for sm_90a."""
    src = cuda_source(launch)
    if not cuda_available():
        raise RuntimeError("[check_cuda] needs NVRTC, CUDA headers and ZMLX_MLX_CUDA_INCLUDE")
    digest = hashlib.sha256(src.encode()).hexdigest()
    if digest in _OK_CACHE:
        return CheckResult(True, "cuda", launch.kernel.name, "", src)
    incs = [cuda_include_dir(), _cuda_headers()]
    incs += [str(Path(d) / "cccl") for d in list(incs) if (Path(d) / "cccl").is_dir()]
    opts = ["--device-as-default-execution-space", "--gpu-architecture=sm_90a"]
    opts += [f"--include-path={d}" for d in incs]
    ok, log = _nvrtc_compile(src, opts)
    if ok:
        _OK_CACHE.add(digest)
    return CheckResult(ok, "cuda", launch.kernel.name, log, src)


def check_metal(launch: Launch) -> CheckResult:
    """Syntax-check the Metal rendering of ``launch`` against the host-C++ shim."""
    src = metal_source(launch)
    cxx = os.environ.get("CXX", "c++")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-Wno-attributes", "-Wno-unused", "-x", "c++"]
    ok, log = _run(cmd, src, ".cpp")
    return CheckResult(ok, "metal", launch.kernel.name, log, src)


def check(launch: Launch) -> CheckResult:
    return check_cuda(launch) if launch.backend == "cuda" else check_metal(launch)


def check_all(launches, max_log: int = 2000) -> list[str]:
    """Compile-check every distinct launch (one per kernel, dtypes and template values).

    Returns:
        One message per failing launch (kernel name and compiler log); empty when all pass.
    """
    seen, failures = set(), []
    for launch in launches:
        b = launch.backend
        key = (launch.kernel.mlx_name(b), tuple(str(d) for d, _ in launch.inputs),
               tuple(str(d) for d in launch.output_dtypes), str(launch.template))  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        result = check(launch)
        if not result.ok:
            failures.append(f"{launch.kernel.name}:\n{result.log[:max_log]}")
    return failures
