//! Every CUDA source compiles with NVRTC for every architecture the engine supports, and every
//! kernel the Rust side looks up is defined in the result. NVRTC needs no GPU or driver, so this
//! runs in CI on a CPU machine: a kernel that would fail to build or to load on the device is
//! caught before any device time is spent. scripts/test.sh installs the NVRTC library from the
//! `nvidia-cuda-nvrtc` wheel; without it the test skips and says so.

use pi0_mps::gpu::{
    arch_for, kernel_names, kernel_source, nvrtc_available, nvrtc_compile, nvrtc_compile_with_log,
};
use pi0_mps::partition::runtime_kernels::{compile_ptx, RUNTIME_SOURCES};

/// Compute capabilities the engine accepts (8.0 or newer) that robots carry: A100, RTX 30xx /
/// Orin-class, RTX 40xx / L4, H100 / H200 (built as sm_90a: wgmma, TMA), B200, Jetson Thor,
/// RTX 50xx. Kernels for one architecture family must not break the others' build.
const CAPABILITIES: &[(i32, i32)] = &[(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (11, 0), (12, 0)];

/// Spills accepted where the engine has never been tuned or measured: NVRTC 13.0's ptxas
/// gives the 4-token-tile weight-streaming GEMMs 72-80 registers on consumer Blackwell and
/// spills 4-40 bytes there. Any other spill fails the test.
const KNOWN_SPILLS: &[(&str, &str)] = &[
    ("sm_120", "wgemm_t4_k"),
    ("sm_120", "wgemm_t4_s3_k"),
    ("sm_120", "wgemm_h_t4_k"),
    ("sm_120", "wgemm_h_t4_s3_k"),
];

fn skip() -> bool {
    if nvrtc_available() {
        return false;
    }
    eprintln!(
        "skipping: the NVRTC library (libnvrtc.so.13) is not on the library path; \
         scripts/test.sh installs it from the nvidia-cuda-nvrtc wheel into .nvrtc/"
    );
    true
}

/// The names of the defined function symbols of an ELF64 little-endian file (a cubin).
fn elf_function_symbols(elf: &[u8]) -> Vec<String> {
    assert!(elf.len() > 64, "cubin of {} bytes", elf.len());
    assert_eq!(&elf[..4], b"\x7fELF", "cubin is not an ELF file");
    assert_eq!(elf[4], 2, "cubin is not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        // (type, offset, size, link, entsize)
        (
            u32_at(h + 4),
            u64_at(h + 0x18),
            u64_at(h + 0x20),
            u32_at(h + 0x28),
            u64_at(h + 0x38),
        )
    };
    const SHT_SYMTAB: usize = 2;
    const STT_FUNC: u8 = 2;
    let mut names = Vec::new();
    for i in 0..shnum {
        let (kind, off, size, link, entsize) = section(i);
        if kind != SHT_SYMTAB || entsize == 0 {
            continue;
        }
        let (_, str_off, str_size, _, _) = section(link);
        let strtab = &elf[str_off..str_off + str_size];
        for s in (off..off + size).step_by(entsize) {
            let (name, info, shndx) = (u32_at(s), elf[s + 4], u16_at(s + 6));
            if info & 0xf != STT_FUNC || shndx == 0 {
                continue;
            }
            let end = strtab[name..].iter().position(|&b| b == 0).unwrap() + name;
            names.push(String::from_utf8_lossy(&strtab[name..end]).into_owned());
        }
    }
    names
}

fn assert_defines_every_kernel(cubin: &[u8], what: &str) {
    let defined = elf_function_symbols(cubin);
    let missing: Vec<_> = kernel_names()
        .iter()
        .filter(|k| !defined.iter().any(|d| d == *k))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: kernels looked up by src/gpu/device.rs but not defined: {missing:?}"
    );
}

/// Per function in ptxas's verbose log: (name, registers, spill store bytes, spill load bytes).
fn ptxas_resources(log: &str) -> Vec<(String, u32, u32, u32)> {
    let number_before = |line: &str, unit: &str| -> u32 {
        let end = line
            .find(unit)
            .unwrap_or_else(|| panic!("no '{unit}' in {line}"));
        let start = line[..end].trim_end().rfind(' ').map_or(0, |i| i + 1);
        line[start..end].trim().parse().unwrap()
    };
    let mut out: Vec<(String, u32, u32, u32)> = Vec::new();
    let mut current: Option<(String, u32, u32)> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some((rest.trim().to_string(), 0, 0));
        } else if line.contains("bytes spill stores") {
            if let Some(c) = current.as_mut() {
                c.1 = number_before(line, "bytes spill stores");
                c.2 = number_before(line, "bytes spill loads");
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some((name, stores, loads)) = current.take() {
                let used = &line[line.find("Used ").unwrap() + 5..];
                let regs = used.split_whitespace().next().unwrap().parse().unwrap();
                out.push((name, regs, stores, loads));
            }
        }
    }
    out
}

#[test]
fn engine_kernels_compile_for_every_supported_architecture_without_new_spills() {
    if skip() {
        return;
    }
    // One thread per architecture: NVRTC compiles are independent and take seconds each.
    let jobs: Vec<_> = CAPABILITIES
        .iter()
        .map(|&(major, minor)| {
            std::thread::spawn(move || {
                let arch = arch_for(major, minor);
                let out =
                    nvrtc_compile_with_log(&kernel_source(false), &arch, &["--ptxas-options=-v"]);
                (arch, out)
            })
        })
        .collect();
    for job in jobs {
        let (arch, out) = job.join().expect("compile thread panicked");
        let (cubin, log) = out.unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_defines_every_kernel(&cubin, &arch);
        // A spill to local memory in a weight-streaming or attention kernel is a silent
        // slowdown: every kernel must keep its state in registers.
        let resources = ptxas_resources(&log);
        for kernel in kernel_names() {
            assert!(
                resources.iter().any(|(name, ..)| name == kernel),
                "{arch}: ptxas reported nothing for {kernel}; the log's format changed?\n{log}"
            );
        }
        let spilling: Vec<_> = resources
            .iter()
            .filter(|(_, _, stores, loads)| *stores > 0 || *loads > 0)
            .filter(|(name, ..)| !KNOWN_SPILLS.contains(&(arch.as_str(), name.as_str())))
            .collect();
        assert!(spilling.is_empty(), "{arch}: register spills {spilling:?}");
        // ptxas warns where it degrades code it was asked for (e.g. wgmma serialized).
        let warnings: Vec<_> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("warning"))
            .collect();
        assert!(
            warnings.is_empty(),
            "{arch}: compiler warnings {warnings:#?}"
        );
        let known = resources
            .iter()
            .filter(|(_, _, stores, loads)| *stores > 0 || *loads > 0)
            .count();
        let most = resources.iter().max_by_key(|r| r.1).unwrap();
        println!(
            "{arch}: {} kernels in {} KB, {known} known spills, most registers {} ({})",
            kernel_names().len(),
            cubin.len() / 1024,
            most.1,
            most.0
        );
    }
}

#[test]
fn engine_kernels_compile_with_the_pdl_wait_first_order() {
    if skip() {
        return;
    }
    // PI0_PDL_EARLY=0 compiles the sources with PI0_PDL_WAIT_FIRST defined (Hopper only uses it).
    let cubin = nvrtc_compile(&kernel_source(true), "sm_90a").unwrap_or_else(|e| panic!("{e}"));
    assert_defines_every_kernel(&cubin, "sm_90a with PI0_PDL_WAIT_FIRST");
}

#[test]
fn a_broken_kernel_source_is_a_compile_error_with_the_log() {
    if skip() {
        return;
    }
    let broken =
        kernel_source(false) + "\nextern \"C\" __global__ void broken_k() { undefined_name(); }\n";
    let err = nvrtc_compile(&broken, "sm_80").expect_err("a source with an error compiled");
    let msg = err.to_string();
    assert!(msg.contains("NVRTC compile for sm_80 failed"), "{msg}");
    assert!(
        msg.contains("undefined_name"),
        "the NVRTC log is not in the error: {msg}"
    );
}

#[test]
fn partition_kernels_compile_and_define_what_the_layer_launches() {
    if skip() {
        return;
    }
    for source in RUNTIME_SOURCES {
        for arch in [
            "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_110", "sm_120",
        ] {
            let ptx = compile_ptx(source, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
            for kernel in source.kernels {
                assert!(
                    ptx.contains(&format!(".entry {kernel}(")),
                    "{} for {arch}: no entry {kernel} in the PTX",
                    source.file
                );
            }
        }
    }
}
