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

/// One compiled source, unloaded when dropped.
pub(super) struct RuntimeLibrary(sys::CUlibrary);

// SAFETY: a library handle is valid in every thread once loaded.
unsafe impl Send for RuntimeLibrary {}
unsafe impl Sync for RuntimeLibrary {}

impl Drop for RuntimeLibrary {
    fn drop(&mut self) {
        // SAFETY: loaded in `compile`, unloaded once.
        unsafe {
            sys::cuLibraryUnload(self.0);
        }
    }
}

impl RuntimeLibrary {
    /// Compiles `src` (named `file` in errors) for `ctx`'s device and loads it.
    pub(super) fn compile(ctx: &Arc<CudaContext>, src: &str, file: &str) -> Result<Self> {
        ctx.bind_to_thread().map_err(gpu("bind context"))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(gpu("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{maj}{min}").into_boxed_str());
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(
            src,
            cudarc::nvrtc::CompileOptions {
                arch: Some(arch),
                ..Default::default()
            },
        )
        .map_err(|e| Error::Gpu(format!("NVRTC ({file}): {e}")))?;
        let text = CString::new(ptx.to_src()).map_err(gpu("PTX"))?;
        // SAFETY: `text` is NUL-terminated PTX.
        let lib = unsafe { load_library(text.as_ptr() as *const c_void) }?;
        Ok(RuntimeLibrary(lib))
    }

    pub(super) fn kernel(&self, name: &str) -> Result<sys::CUkernel> {
        library_kernel(self.0, name)
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
