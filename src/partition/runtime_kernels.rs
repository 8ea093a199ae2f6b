//! The partition layer's own CUDA sources (kernels/partition/), compiled at run time by NVRTC
//! and loaded context-independently (cuLibrary), so that their kernels launch in green
//! contexts and in MPS execution-affinity contexts alike.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaStream};

use crate::error::{Error, Result};
use crate::gpu::device::{cu, library_kernel, load_library};

/// A driver error as this layer's error, prefixed with what was being done.
pub(super) fn gpu<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

/// A CUDA source of this layer and the kernels the layer looks up in it.
pub struct RuntimeSource {
    /// Path in the repository, for errors.
    pub file: &'static str,
    pub text: &'static str,
    /// Every `extern "C" __global__` the layer launches from it.
    pub kernels: &'static [&'static str],
}

/// The synthetic stages and the %smid probe.
pub const SYNTHETIC: RuntimeSource = RuntimeSource {
    file: "kernels/partition/synthetic.cu",
    text: include_str!("../../kernels/partition/synthetic.cu"),
    kernels: &["smid_probe", "enc_layer", "dec_reduce", "dec_update"],
};

/// The interference study's aggressors.
pub const AGGRESSOR: RuntimeSource = RuntimeSource {
    file: "kernels/partition/aggressor.cu",
    text: include_str!("../../kernels/partition/aggressor.cu"),
    kernels: &["agg_spin", "agg_read", "agg_fill", "agg_empty"],
};

/// Every source of this layer (CI compiles each with NVRTC, no GPU needed).
pub const RUNTIME_SOURCES: &[RuntimeSource] = &[SYNTHETIC, AGGRESSOR];

/// Compiles `source` to PTX for `arch` (e.g. "sm_90"). Needs the NVRTC library only.
pub fn compile_ptx(source: &RuntimeSource, arch: &'static str) -> Result<String> {
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(
        source.text,
        cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            ..Default::default()
        },
    )
    .map_err(|e| Error::Gpu(format!("NVRTC ({}): {e}", source.file)))?;
    Ok(ptx.to_src())
}

/// One compiled source, unloaded when dropped.
pub(super) struct RuntimeLibrary {
    lib: sys::CUlibrary,
    source: &'static RuntimeSource,
}

// SAFETY: a library handle is valid in every thread once loaded.
unsafe impl Send for RuntimeLibrary {}
unsafe impl Sync for RuntimeLibrary {}

impl Drop for RuntimeLibrary {
    fn drop(&mut self) {
        // SAFETY: loaded in `compile`, unloaded once.
        unsafe {
            sys::cuLibraryUnload(self.lib);
        }
    }
}

impl RuntimeLibrary {
    /// Compiles `source` for `ctx`'s device and loads it.
    pub(super) fn compile(ctx: &Arc<CudaContext>, source: &'static RuntimeSource) -> Result<Self> {
        ctx.bind_to_thread().map_err(gpu("bind context"))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(gpu("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{maj}{min}").into_boxed_str());
        let text = CString::new(compile_ptx(source, arch)?).map_err(gpu("PTX"))?;
        // SAFETY: `text` is NUL-terminated PTX.
        let lib = unsafe { load_library(text.as_ptr() as *const c_void) }?;
        Ok(RuntimeLibrary { lib, source })
    }

    /// A kernel of the source. Only declared kernels are looked up, so that CI's compile check
    /// covers every kernel the layer launches.
    pub(super) fn kernel(&self, name: &str) -> Result<sys::CUkernel> {
        if !self.source.kernels.contains(&name) {
            return Err(Error::Gpu(format!(
                "kernel {name} is not declared in {}'s RuntimeSource",
                self.source.file
            )));
        }
        library_kernel(self.lib, name)
    }
}

/// Launches `k` on `stream` with a 1-D grid and block, no dynamic shared memory.
///
/// # Safety
/// `params` must match the kernel's parameter list.
pub(super) unsafe fn launch(
    k: sys::CUkernel,
    stream: &Arc<CudaStream>,
    grid: u32,
    block: u32,
    params: &mut [*mut c_void],
) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(gpu("bind context"))?;
    cu(
        sys::cuLaunchKernel(
            k as sys::CUfunction,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream.cu_stream(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        ),
        "cuLaunchKernel",
    )
}
