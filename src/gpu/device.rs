//! Device memory, the NVRTC-compiled kernel library (disk-cached) and raw kernel launches.
//! Kernels are loaded context-independently (cuLibraryLoadData / cuLibraryGetKernel) so the same
//! handles launch on primary-context streams and on green-context streams.

use std::ffi::{c_void, CString};
use std::path::PathBuf;

use cudarc::driver::{result as dr, sys};

use crate::error::{Error, Result};

pub(crate) fn cu(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Gpu(format!("{what}: {r:?}")))
    }
}

/// Loads a CUBIN, or NUL-terminated PTX, context-independently: its kernels launch on the
/// streams of any context of the device, green contexts included.
///
/// # Safety
/// `image` must point to a complete CUBIN or NUL-terminated PTX image.
pub(crate) unsafe fn load_library(image: *const c_void) -> Result<sys::CUlibrary> {
    let mut lib: sys::CUlibrary = std::ptr::null_mut();
    // No JIT or library options.
    let r = sys::cuLibraryLoadData(
        &mut lib,
        image,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        0,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        0,
    );
    cu(r, "cuLibraryLoadData")?;
    Ok(lib)
}

/// The kernel `name` of a library from `load_library`.
pub(crate) fn library_kernel(lib: sys::CUlibrary, name: &str) -> Result<sys::CUkernel> {
    let c = CString::new(name).map_err(|_| Error::Gpu(format!("kernel name {name:?}")))?;
    let mut k: sys::CUkernel = std::ptr::null_mut();
    // SAFETY: lib is loaded; the name is NUL-terminated.
    let r = unsafe { sys::cuLibraryGetKernel(&mut k, lib, c.as_ptr()) };
    cu(r, &format!("cuLibraryGetKernel({name})"))?;
    Ok(k)
}

pub(crate) fn drv<T>(r: std::result::Result<T, dr::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| Error::Gpu(format!("{what}: {e:?}")))
}

/// A device allocation (freed on drop). Plain `cuMemAlloc`; the address is what kernels get.
pub struct DBuf {
    pub ptr: u64,
    pub bytes: usize,
}

impl DBuf {
    pub fn new(bytes: usize) -> Result<Self> {
        let bytes = bytes.max(256);
        // SAFETY: plain allocation in the current (primary) context; zeroed so that unwritten
        // padding never holds garbage.
        let ptr = drv(unsafe { dr::malloc_sync(bytes) }, "cuMemAlloc")?;
        drv(unsafe { dr::memset_d8_sync(ptr, 0, bytes) }, "cuMemsetD8")?;
        Ok(DBuf { ptr, bytes })
    }
    pub fn from_slice<T: Copy>(data: &[T]) -> Result<Self> {
        let b = Self::new(std::mem::size_of_val(data))?;
        b.upload(data)?;
        Ok(b)
    }
    /// The first `n` elements, copied back synchronously (GPU tests and studies).
    pub fn download<T: Copy + Default>(&self, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if std::mem::size_of_val(out.as_slice()) > self.bytes {
            return Err(Error::Gpu(format!(
                "download of {n} elements from {} bytes",
                self.bytes
            )));
        }
        // SAFETY: size checked above; synchronous copy into host memory.
        drv(
            unsafe { dr::memcpy_dtoh_sync(&mut out, self.ptr) },
            "cuMemcpyDtoH",
        )?;
        Ok(out)
    }
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<()> {
        let n = std::mem::size_of_val(data);
        if n > self.bytes {
            return Err(Error::Gpu(format!(
                "upload of {n} bytes into {} bytes",
                self.bytes
            )));
        }
        // SAFETY: size checked above; synchronous copy from host memory.
        drv(
            unsafe { dr::memcpy_htod_sync(self.ptr, data) },
            "cuMemcpyHtoD",
        )?;
        // From pageable memory cuMemcpyHtoD may return once the data is staged, before it has
        // landed; the engine's streams do not wait for the legacy stream, so wait here (uploads
        // happen at start-up and in tests, never on the hot path).
        // SAFETY: plain synchronisation of the current context.
        cu(
            unsafe { sys::cuCtxSynchronize() },
            "cuCtxSynchronize after upload",
        )
    }
}

impl Drop for DBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once.
        let _ = unsafe { dr::free_sync(self.ptr) };
    }
}

/// Pinned host staging memory.
pub struct Pinned {
    ptr: *mut u8,
}
unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

impl Pinned {
    pub fn new(bytes: usize) -> Result<Self> {
        let bytes = bytes.max(64);
        // SAFETY: page-locked host allocation, freed on drop.
        let ptr = drv(unsafe { dr::malloc_host(bytes, 0) }, "cuMemHostAlloc")? as *mut u8;
        Ok(Pinned { ptr })
    }
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}
impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host.
        let _ = unsafe { dr::free_host(self.ptr as *mut c_void) };
    }
}

/// Async host→device copy from pinned (or pageable) memory.
pub(crate) fn htod_async(
    dst: u64,
    src: *const u8,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<()> {
    // SAFETY: caller guarantees src holds `bytes` bytes that stay valid until the copy ran.
    cu(
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, stream) },
        "cuMemcpyHtoDAsync",
    )
}

pub(crate) fn dtoh_async(
    dst: *mut u8,
    src: u64,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<()> {
    // SAFETY: as above.
    cu(
        unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, stream) },
        "cuMemcpyDtoHAsync",
    )
}

/// 2-D device copy: `height` rows of `width` bytes.
pub(crate) fn copy_2d(
    dst: u64,
    dst_pitch: usize,
    src: u64,
    src_pitch: usize,
    width: usize,
    height: usize,
    stream: sys::CUstream,
) -> Result<()> {
    if width == 0 || height == 0 {
        return Ok(());
    }
    let p = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: height,
    };
    // SAFETY: both regions are device allocations of at least pitch*height bytes.
    cu(
        unsafe { sys::cuMemcpy2DAsync_v2(&p, stream) },
        "cuMemcpy2DAsync",
    )
}

/// Kernel arguments, passed by value.
#[derive(Clone, Copy, Debug)]
pub enum A {
    /// A device pointer.
    P(u64),
    I(i32),
    F(f32),
    L(i64),
    /// A `CUtensorMap` passed by value (a kernel's `__grid_constant__` TMA descriptor).
    Map(TensorMap),
}

/// A `CUtensorMap`: 128 opaque bytes, 64-byte aligned.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct TensorMap(pub [u64; 16]);

macro_rules! kernels {
    ($($id:ident = $name:literal),* $(,)?) => {
        /// Every kernel in kernels/*.cu.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum K { $($id),* }
        const KERNEL_NAMES: &[&str] = &[$($name),*];
    };
}

kernels! {
    LayerNorm = "layernorm_k",
    Softmax = "softmax_k",
    Patchify = "patchify_k",
    Embed = "embed_k",
    GeluMul = "gelu_mul_k",
    ActionIn = "action_in_k",
    StateProj = "state_proj_k",
    OutEuler = "out_euler_k",
    Wgemm2 = "wgemm_t2_k",
    Wgemm4 = "wgemm_t4_k",
    Wgemm6 = "wgemm_t6_k",
    Wgemm8 = "wgemm_t8_k",
    Wgemm10 = "wgemm_t10_k",
    Wgemm2S3 = "wgemm_t2_s3_k",
    Wgemm4S3 = "wgemm_t4_s3_k",
    Wgemm6S3 = "wgemm_t6_s3_k",
    Wgemm8S3 = "wgemm_t8_s3_k",
    Wgemm10S3 = "wgemm_t10_s3_k",
    WgemmH2 = "wgemm_h_t2_k",
    WgemmH4 = "wgemm_h_t4_k",
    WgemmH6 = "wgemm_h_t6_k",
    WgemmH8 = "wgemm_h_t8_k",
    WgemmH10 = "wgemm_h_t10_k",
    WgemmH2S3 = "wgemm_h_t2_s3_k",
    WgemmH4S3 = "wgemm_h_t4_s3_k",
    WgemmH6S3 = "wgemm_h_t6_s3_k",
    WgemmH8S3 = "wgemm_h_t8_s3_k",
    WgemmH10S3 = "wgemm_h_t10_s3_k",
    RopePart = "rope_part_k",
    RopeRows = "rope_rows_k",
    ResidRms = "resid_rms_k",
    GeluPart = "gelu_part_k",
    Flash16 = "flash_hd16_k",
    Flash32 = "flash_hd32_k",
    Flash64 = "flash_hd64_k",
    Flash80 = "flash_hd80_k",
    Flash128 = "flash_hd128_k",
    Flash256 = "flash_hd256_k",
    GateUpGelu = "gateup_gelu_k",
    GateUpGelu3 = "gateup_gelu3_k",
    GateUpGelu3C2 = "gateup_gelu3_c2_k",
    GateUpGelu3C4 = "gateup_gelu3_c4_k",
}

/// The CUDA sources, concatenated in this order for one NVRTC compilation.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    ("norm.cu", include_str!("../../kernels/norm.cu")),
    ("attention.cu", include_str!("../../kernels/attention.cu")),
    (
        "elementwise.cu",
        include_str!("../../kernels/elementwise.cu"),
    ),
    ("skinny.cu", include_str!("../../kernels/skinny.cu")),
    ("flash.cu", include_str!("../../kernels/flash.cu")),
    ("gateup.cu", include_str!("../../kernels/gateup.cu")),
];

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The loaded kernel library.
pub struct Kernels {
    lib: sys::CUlibrary,
    kernels: Vec<sys::CUkernel>,
    pub arch: String,
    pub cache_file: Option<PathBuf>,
    pub from_cache: bool,
}
// SAFETY: CUlibrary / CUkernel handles are context-independent and usable from any thread.
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

impl Drop for Kernels {
    fn drop(&mut self) {
        // SAFETY: loaded once by cuLibraryLoadData.
        unsafe { sys::cuLibraryUnload(self.lib) };
    }
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("PI0_KERNEL_CACHE") {
        return Some(PathBuf::from(x));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("pi0_mps"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("pi0_mps"))
}

/// NVRTC architecture name for a compute capability (sm_90a on Hopper for wgmma/setmaxnreg).
pub fn arch_for(major: i32, minor: i32) -> String {
    if major == 9 && minor == 0 {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// The one NVRTC translation unit: every file of `SOURCES` in order, with
/// `PI0_PDL_WAIT_FIRST` defined first when `pdl_wait_first`.
pub fn kernel_source(pdl_wait_first: bool) -> String {
    let mut src = String::new();
    if pdl_wait_first {
        src.push_str("#define PI0_PDL_WAIT_FIRST 1\n");
    }
    for (name, text) in SOURCES {
        src.push_str(&format!("// ---- {name} ----\n"));
        src.push_str(text);
        src.push('\n');
    }
    src
}

/// The names of every kernel `Kernels::load` looks up in the compiled library.
pub fn kernel_names() -> &'static [&'static str] {
    KERNEL_NAMES
}

/// Whether the NVRTC library can be loaded (it needs no GPU or driver).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `src` for `arch` (e.g. "sm_90a") with the engine's NVRTC options and returns the
/// cubin. Needs the NVRTC library only, no GPU: CI compiles every kernel this way.
pub fn nvrtc_compile(src: &str, arch: &str) -> Result<Vec<u8>> {
    nvrtc_compile_with_log(src, arch, &[]).map(|(cubin, _)| cubin)
}

/// `nvrtc_compile` with `extra` options after the engine's (e.g. "--ptxas-options=-v"),
/// returning NVRTC's log beside the cubin.
pub fn nvrtc_compile_with_log(src: &str, arch: &str, extra: &[&str]) -> Result<(Vec<u8>, String)> {
    use cudarc::nvrtc::{result as nr, sys as ns};
    let csrc = CString::new(src).map_err(|_| Error::Gpu("kernel source has a NUL byte".into()))?;
    let prog = nr::create_program(&csrc, Some(c"pi0_kernels.cu"))
        .map_err(|e| Error::Gpu(format!("nvrtcCreateProgram: {e:?}")))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "--extra-device-vectorization".to_string(),
    ]
    .into_iter()
    .chain(extra.iter().map(|o| o.to_string()))
    .collect::<Vec<_>>();
    // SAFETY: prog is valid until destroyed below.
    let res = unsafe { nr::compile_program(prog, &opts) };
    let log = unsafe { nr::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = res {
        unsafe {
            let _ = nr::destroy_program(prog);
        }
        return Err(Error::Gpu(format!(
            "NVRTC compile for {arch} failed ({e:?}):\n{log}"
        )));
    }
    let mut size = 0usize;
    // SAFETY: prog compiled successfully.
    let cubin = unsafe {
        let r = ns::nvrtcGetCUBINSize(prog, &mut size);
        if r != ns::nvrtcResult::NVRTC_SUCCESS {
            let _ = nr::destroy_program(prog);
            return Err(Error::Gpu(format!("nvrtcGetCUBINSize: {r:?}")));
        }
        let mut buf = vec![0u8; size];
        let r = ns::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char);
        let _ = nr::destroy_program(prog);
        if r != ns::nvrtcResult::NVRTC_SUCCESS {
            return Err(Error::Gpu(format!("nvrtcGetCUBIN: {r:?}")));
        }
        buf
    };
    if !log.trim().is_empty() {
        log::debug!("NVRTC log: {log}");
    }
    Ok((cubin, log))
}

impl Kernels {
    /// Compiles (or reads from the disk cache) and loads all kernels for compute capability
    /// (major, minor). Cache key: source hash + arch + driver version.
    pub fn load(major: i32, minor: i32) -> Result<Self> {
        let arch = arch_for(major, minor);
        // PI0_PDL_EARLY=0: the decoder's norms and GELU-gate wait before they let the next
        // weight GEMM launch (the order before v24, for comparisons). Part of the source, so
        // of the kernel cache key.
        let src = kernel_source(std::env::var("PI0_PDL_EARLY").is_ok_and(|v| v == "0"));
        let mut driver = 0i32;
        // SAFETY: plain query.
        cu(
            unsafe { sys::cuDriverGetVersion(&mut driver) },
            "cuDriverGetVersion",
        )?;
        let hash = fnv1a(src.as_bytes(), 0xcbf29ce484222325);
        let file =
            cache_dir().map(|d| d.join(format!("kernels-{hash:016x}-{arch}-drv{driver}.cubin")));
        let mut from_cache = false;
        let cubin = match file.as_ref().and_then(|f| std::fs::read(f).ok()) {
            Some(b) if !b.is_empty() => {
                from_cache = true;
                b
            }
            _ => {
                let b = nvrtc_compile(&src, &arch)?;
                if let Some(f) = &file {
                    if let Some(d) = f.parent() {
                        let _ = std::fs::create_dir_all(d);
                    }
                    let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, &b).is_ok() {
                        let _ = std::fs::rename(&tmp, f);
                    }
                }
                b
            }
        };
        // SAFETY: cubin is a complete image.
        let lib = unsafe { load_library(cubin.as_ptr() as *const c_void) }?;
        let kernels = KERNEL_NAMES
            .iter()
            .map(|name| library_kernel(lib, name))
            .collect::<Result<Vec<_>>>()?;
        Ok(Kernels {
            lib,
            kernels,
            arch,
            cache_file: file,
            from_cache,
        })
    }

    /// Raises a kernel's dynamic shared memory limit on `dev`.
    pub fn set_max_smem(&self, k: K, bytes: i32, dev: sys::CUdevice) -> Result<()> {
        // SAFETY: valid kernel handle.
        cu(
            unsafe {
                sys::cuKernelSetAttribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                    self.kernels[k as usize],
                    dev,
                )
            },
            "cuKernelSetAttribute",
        )
    }

    /// Launches kernel `k` on `stream`; with `pdl` as a programmatic dependent launch: it may
    /// start while the previous kernel finishes, and waits for it in `griddepcontrol.wait`
    /// (kernels/common.cuh), so its independent prologue (weight prefetch) overlaps.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_ex(
        &self,
        k: K,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        stream: sys::CUstream,
        args: &[A],
        pdl: bool,
    ) -> Result<()> {
        self.launch_cluster(k, grid, block, smem, stream, args, pdl, (1, 1, 1))
    }

    /// `launch_ex` with thread-block clusters of `cluster` = (x, y, z) CTAs (Hopper and newer;
    /// (1, 1, 1): no cluster).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_cluster(
        &self,
        k: K,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        stream: sys::CUstream,
        args: &[A],
        pdl: bool,
        cluster: (u32, u32, u32),
    ) -> Result<()> {
        let mut store: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                A::P(p) => p,
                A::I(i) => i as u32 as u64,
                A::F(f) => f.to_bits() as u64,
                A::L(l) => l as u64,
                A::Map(_) => 0,
            })
            .collect();
        // Tensor maps are passed from their own (aligned) copies; `store` holds a placeholder.
        let mut maps: Vec<TensorMap> = args
            .iter()
            .filter_map(|a| match a {
                A::Map(m) => Some(*m),
                _ => None,
            })
            .collect();
        let mut next_map = maps.iter_mut();
        let mut ptrs: Vec<*mut c_void> = args
            .iter()
            .zip(store.iter_mut())
            .map(|(a, x)| match a {
                A::Map(_) => next_map.next().unwrap() as *mut TensorMap as *mut c_void,
                _ => x as *mut u64 as *mut c_void,
            })
            .collect();
        let f = self.kernels[k as usize] as sys::CUfunction;
        let mut attrs: Vec<sys::CUlaunchAttribute> = Vec::new();
        if pdl {
            // SAFETY: zeroed attribute union, then the documented field for this id.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            attrs.push(attr);
        }
        if cluster != (1, 1, 1) {
            // SAFETY: as above.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attr.value.clusterDim.x = cluster.0;
            attr.value.clusterDim.y = cluster.1;
            attr.value.clusterDim.z = cluster.2;
            attrs.push(attr);
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        };
        // SAFETY: argument values live in `store` and the attributes in `attrs` for the duration
        // of the call (the driver copies them); a CUkernel may be passed where a CUfunction is
        // expected.
        let r = unsafe { sys::cuLaunchKernelEx(&cfg, f, ptrs.as_mut_ptr(), std::ptr::null_mut()) };
        cu(r, KERNEL_NAMES[k as usize])
    }
}

/// Whether the driver has the green-context API (CUDA 12.4+): its symbols are looked up on
/// first call, and an older driver lacks them.
fn driver_has_green_contexts() -> bool {
    static DRIVER: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let driver = *DRIVER.get_or_init(|| {
        let mut v = 0;
        // SAFETY: plain query.
        unsafe { sys::cuDriverGetVersion(&mut v) };
        v
    });
    driver >= 12040
}

/// The green context `s` was made in (None: an ordinary stream, or a driver before CUDA 12.4,
/// which has no green contexts).
pub(crate) fn stream_green_ctx(s: sys::CUstream) -> Option<sys::CUgreenCtx> {
    if !driver_has_green_contexts() {
        return None;
    }
    let mut g: sys::CUgreenCtx = std::ptr::null_mut();
    // SAFETY: plain query on a valid stream.
    let r = unsafe { sys::cuStreamGetGreenCtx(s, &mut g) };
    (r == sys::CUresult::CUDA_SUCCESS && !g.is_null()).then_some(g)
}

/// The device's SMs cut once by `cuDevSmResourceSplitByCount` into whole groups of
/// `granularity` (`minSmPartitionSize`) plus the SMs left over (an H100: 15 groups of 8 and
/// 12 left over, two per GPC in six GPCs).
pub(crate) struct GreenSplit {
    pub total: u32,
    pub granularity: u32,
    pub groups: Vec<sys::CUdevResource>,
    pub remainder: sys::CUdevResource,
}

/// All SMs of `dev` as one green-context resource (the caller binds a context of `dev`).
pub(crate) fn device_sm_resource(dev: sys::CUdevice) -> Result<sys::CUdevResource> {
    // SAFETY: a plain query into a zeroed resource.
    unsafe {
        let mut all: sys::CUdevResource = std::mem::zeroed();
        cu(
            sys::cuDeviceGetDevResource(
                dev,
                &mut all,
                sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
            ),
            "cuDeviceGetDevResource (green contexts need driver >= 550 / CUDA 12.4)",
        )?;
        Ok(all)
    }
}

impl GreenSplit {
    pub fn new(dev: sys::CUdevice) -> Result<Self> {
        let all = device_sm_resource(dev)?;
        // SAFETY: plain queries into zeroed resources; `groups` has room for every group.
        unsafe {
            let sm = all.__bindgen_anon_1.sm;
            let granularity = sm.minSmPartitionSize.max(1);
            let mut n = sm.smCount / granularity;
            let mut groups: Vec<sys::CUdevResource> = vec![std::mem::zeroed(); n as usize];
            let mut remainder: sys::CUdevResource = std::mem::zeroed();
            cu(
                sys::cuDevSmResourceSplitByCount(
                    groups.as_mut_ptr(),
                    &mut n,
                    &all,
                    &mut remainder,
                    0,
                    granularity,
                ),
                "cuDevSmResourceSplitByCount",
            )?;
            groups.truncate(n as usize);
            Ok(GreenSplit {
                total: sm.smCount,
                granularity,
                groups,
                remainder,
            })
        }
    }

    /// SMs outside the whole groups.
    pub fn left_over(&self) -> u32 {
        // SAFETY: an SM resource written by the split.
        unsafe { self.remainder.__bindgen_anon_1.sm.smCount }
    }
}

/// (granularity, left-over SMs) of the device's green split; None where green contexts are
/// unavailable.
pub(crate) fn green_left_over_sms(dev: sys::CUdevice) -> Option<(u32, u32)> {
    if !driver_has_green_contexts() {
        return None;
    }
    let split = GreenSplit::new(dev).ok()?;
    Some((split.granularity, split.left_over()))
}

/// SMs provisioned to green context `g`.
pub(crate) fn green_ctx_sms(g: sys::CUgreenCtx) -> Result<u32> {
    // SAFETY: plain query on a valid green context into a zeroed resource.
    unsafe {
        let mut r: sys::CUdevResource = std::mem::zeroed();
        cu(
            sys::cuGreenCtxGetDevResource(
                g,
                &mut r,
                sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
            ),
            "cuGreenCtxGetDevResource",
        )?;
        Ok(r.__bindgen_anon_1.sm.smCount)
    }
}

/// The SM-count execution affinity of the context bound to this thread (an MPS context's cap).
pub(crate) fn bound_context_sm_affinity() -> Result<u32> {
    // SAFETY: plain query of the bound context into a zeroed parameter.
    unsafe {
        let mut aff: sys::CUexecAffinityParam = std::mem::zeroed();
        cu(
            sys::cuCtxGetExecAffinity(
                &mut aff,
                sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
            ),
            "cuCtxGetExecAffinity",
        )?;
        Ok(aff.param.smCount.val)
    }
}

/// For the kernel unit tests: the device-0 context (bound to this thread) and its compiled
/// kernels, or None after printing why `test` is skipped (no usable GPU, e.g. on CI).
#[cfg(test)]
pub(crate) fn test_kernels(
    test: &str,
) -> Option<(std::sync::Arc<cudarc::driver::CudaContext>, Kernels)> {
    if let Some(why) = crate::gpu::skip_reason() {
        println!("skipping {test}: no usable GPU ({why})");
        return None;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    ctx.bind_to_thread().unwrap();
    let (major, minor) = ctx.compute_capability().unwrap();
    let kernels = Kernels::load(major, minor).unwrap();
    Some((ctx, kernels))
}
