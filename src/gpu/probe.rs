//! Finding the CUDA libraries before cudarc touches them. cudarc's dynamic loading panics when a
//! library is missing; we look first (with the same candidate names cudarc tries) and return
//! `Error::Gpu` saying what was looked for.

use crate::error::{Error, Result};

/// The libraries the engine needs: (cudarc's name, what it is).
pub const REQUIRED: [(&str, &str); 3] = [
    ("cuda", "the NVIDIA driver (libcuda)"),
    ("nvrtc", "the CUDA run-time compiler (libnvrtc)"),
    ("cublasLt", "cuBLASLt (libcublasLt)"),
];

/// Candidate file names cudarc tries for `lib`.
pub fn candidates(lib: &str) -> Vec<String> {
    cudarc::get_lib_name_candidates(lib)
}

/// Tries to open one of `lib`'s candidate names; Ok(name) of the first that opens.
pub fn find_library(lib: &str) -> std::result::Result<String, Vec<String>> {
    let names = candidates(lib);
    for n in &names {
        // SAFETY: opening a shared library runs its initialisers; these are the CUDA libraries
        // cudarc itself would open with the same names.
        if unsafe { libloading::Library::new(n) }.is_ok() {
            return Ok(n.clone());
        }
    }
    Err(names)
}

/// Checks that every required library can be opened. The error names each missing library and
/// the file names that were tried.
pub fn check_libraries() -> Result<()> {
    let mut missing = Vec::new();
    for (lib, what) in REQUIRED {
        if let Err(tried) = find_library(lib) {
            let mut short: Vec<&str> = tried
                .iter()
                .map(String::as_str)
                .filter(|n| n.contains(".so") && !n.contains("64"))
                .collect();
            short.dedup();
            missing.push(format!("{what}: tried {}", short.join(", ")));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Gpu(format!(
            "CUDA libraries not found ({}). Install the NVIDIA driver and the CUDA 13 toolkit \
             libraries, or add their folder (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH",
            missing.join("; ")
        )))
    }
}

/// Why GPU tests should be skipped on this machine, or None when a usable GPU is there.
/// Never panics: libraries are probed, then the driver is asked for a device.
pub fn skip_reason() -> Option<String> {
    if let Err(e) = check_libraries() {
        return Some(e.to_string());
    }
    match std::panic::catch_unwind(|| {
        cudarc::driver::result::init().and_then(|_| cudarc::driver::result::device::get_count())
    }) {
        Ok(Ok(n)) if n > 0 => None,
        Ok(Ok(_)) => Some("the CUDA driver reports no GPU".into()),
        Ok(Err(e)) => Some(format!("CUDA driver init failed: {e:?}")),
        Err(_) => Some("the CUDA driver panicked during init".into()),
    }
}
